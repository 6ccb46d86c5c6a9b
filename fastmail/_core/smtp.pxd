# C types for smtp.py (Cython pure-Python mode: this file augments the .py source when compiled).

cimport cython

ctypedef unsigned char uchar
ctypedef const unsigned char* p_const_uchar

cdef bytes _CLASS, _ALNUM, _ATEXT_DOT, _LDH_DOT, _QTEXT, _VALUE, _XCHAR, _HEX, _HIGH, _DIGITS_DOT, _IPV6_CHARS
cdef dict _VERBS

@cython.locals(i=Py_ssize_t, n=Py_ssize_t, c=uchar, s=p_const_uchar, t=p_const_uchar, verb=bytes, args=bytes, name=str)
cpdef tuple parse_command(bytes line)

@cython.locals(head=bytes, bounds=tuple, params=dict, utf8=bint)
cpdef tuple parse_mail_from(bytes args)

@cython.locals(head=bytes, bounds=tuple, params=dict)
cpdef tuple parse_rcpt_to(bytes args, bint utf8=*)

@cython.locals(n=Py_ssize_t, a=Py_ssize_t, b=Py_ssize_t, q=Py_ssize_t)
cdef tuple _path_bounds(bytes args, Py_ssize_t p)

@cython.locals(n=Py_ssize_t, eq=Py_ssize_t, item=bytes, key=bytes, name=str)
cdef dict _parse_params(bytes args, Py_ssize_t p)

@cython.locals(rest=bytes)
cdef _decode_values(dict params, bint utf8)

@cython.locals(n=Py_ssize_t, q=Py_ssize_t, at=Py_ssize_t, local=str)
cpdef parse_path(bytes path, bint utf8)

@cython.locals(n=Py_ssize_t, p=Py_ssize_t, e=Py_ssize_t, c=Py_ssize_t)
cdef Py_ssize_t _skip_route(bytes path, bint utf8) except -1

@cython.locals(i=Py_ssize_t, j=Py_ssize_t, k=Py_ssize_t)
cdef Py_ssize_t _quoted_end(bytes s, Py_ssize_t q)

@cython.locals(n=Py_ssize_t, i=Py_ssize_t, c=uchar, s=p_const_uchar, t=p_const_uchar, dot=bint, high=bint, rest=bytes)
cdef str _dot_string(bytes b, bint utf8)

@cython.locals(k=Py_ssize_t, i=Py_ssize_t, n=Py_ssize_t, c=int, out=bytearray, seg=bytes, raw=bytes)
cdef str _unquote(bytes content, bint utf8)

@cython.locals(rest=bytes)
cdef bint _qtext_ok(bytes seg, bint utf8)

@cython.locals(n=Py_ssize_t, dot=Py_ssize_t, i=Py_ssize_t, c=uchar, s=p_const_uchar, t=p_const_uchar, label=Py_ssize_t, digits=bint)
cdef str _domain(bytes d, bint utf8)

@cython.locals(total=Py_ssize_t, size=Py_ssize_t, s=str, label=str, ch=str, labels=list)
cdef str _u_domain(bytes d)

@cython.locals(n=Py_ssize_t, inner=bytes, text=bytes)
cdef str _address_literal(bytes d)

@cython.locals(b=bytes, out=bytearray, i=Py_ssize_t, k=Py_ssize_t, h=bytes)
cpdef str xtext_decode(str s)

@cython.locals(b=bytes, out=list, c=int)
cpdef str xtext_encode(str s)
