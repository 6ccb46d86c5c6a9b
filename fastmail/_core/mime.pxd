# C types for mime.py (Cython pure-Python mode: this file augments the .py source when compiled).
# `p` is the bytes object in the pure twin and a pointer to its data when compiled: p[i] is a byte either way.

import cython

cdef bytes _CHARS  # byte classes (a C global: the pointers taken to it stay valid)

@cython.locals(p='const unsigned char*', r='const void*')
cdef Py_ssize_t _lf(bytes buf, Py_ssize_t pos, Py_ssize_t end) except -2

@cython.locals(lf=Py_ssize_t)
cdef Py_ssize_t _next_line(bytes buf, Py_ssize_t pos, Py_ssize_t end) except -2

@cython.locals(p='const unsigned char*')
cdef Py_ssize_t _strip_nl(bytes buf, Py_ssize_t lo, Py_ssize_t pos) except -2

@cython.locals(p='const unsigned char*', q='const unsigned char*', s=Py_ssize_t, le=Py_ssize_t,
               ce=Py_ssize_t, best=Py_ssize_t, best_len=Py_ssize_t, k=Py_ssize_t, bl=Py_ssize_t, b=bytes,
               same=bint)
cdef Py_ssize_t _boundary_at(bytes buf, Py_ssize_t pos, Py_ssize_t end, list bounds) except -2

@cython.locals(p='const unsigned char*', n=Py_ssize_t, pos=Py_ssize_t, nb=Py_ssize_t, c=int, r=Py_ssize_t,
               pe=Py_ssize_t, lf=Py_ssize_t)
cpdef tuple scan_header(bytes buf, Py_ssize_t start, Py_ssize_t end, list bounds)

@cython.locals(p='const unsigned char*', q='const void*', n=Py_ssize_t, r=Py_ssize_t, i=Py_ssize_t,
               j=Py_ssize_t)
cpdef tuple find_boundary(bytes buf, Py_ssize_t pos, Py_ssize_t end, list bounds)

cpdef Py_ssize_t count_lines(bytes buf, Py_ssize_t start, Py_ssize_t end) except -1

@cython.locals(p='const unsigned char*', n=Py_ssize_t, pos=Py_ssize_t, c=int, i=Py_ssize_t,
               name_end=Py_ssize_t, bad=bint, colon=Py_ssize_t, multi=bint, q=Py_ssize_t, lf=Py_ssize_t,
               fe=Py_ssize_t, nxt=Py_ssize_t, res=list, name=bytes, value=bytes)
cdef list _scan_fields(bytes buf, Py_ssize_t start, Py_ssize_t end, object wanted, bint spans)

cpdef list fields(bytes buf, Py_ssize_t start, Py_ssize_t end, object wanted)

cpdef list field_spans(bytes buf, Py_ssize_t start, Py_ssize_t end)

@cython.locals(p='const unsigned char*', n=Py_ssize_t, k=Py_ssize_t, c=int, out=bytearray)
cdef bytes _unescape(bytes raw)

@cython.locals(p='const unsigned char*', j=Py_ssize_t, esc=bint, c=int, text=bytes)
cdef Py_ssize_t _quoted(bytes v, Py_ssize_t i, Py_ssize_t n, list out) except -2

@cython.locals(p='const unsigned char*', j=Py_ssize_t, depth=Py_ssize_t, esc=bint, c=int, text=bytes)
cdef Py_ssize_t _comment(bytes v, Py_ssize_t i, Py_ssize_t n, list out) except -2

@cython.locals(p='const unsigned char*', c=int, depth=Py_ssize_t)
cdef Py_ssize_t _skip_cfws(bytes v, Py_ssize_t i, Py_ssize_t n) except -2

@cython.locals(p='const unsigned char*', t='const unsigned char*')
cdef Py_ssize_t _token_end(bytes v, Py_ssize_t i, Py_ssize_t n) except -2

@cython.locals(p='const unsigned char*', t='const unsigned char*', n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, c=int,
               tmp=list)
cdef _lex(bytes v, list kinds, list texts)

@cython.locals(kinds=list, texts=list, res=list, k=Py_ssize_t, kind=int)
cpdef list lex_address(bytes v)

@cython.locals(words=list, k=Py_ssize_t, kind=int)
cdef bytes _words(list kinds, list texts, Py_ssize_t a, Py_ssize_t b, bytes sep)

@cython.locals(at=Py_ssize_t, e=Py_ssize_t, local=bytes, domain=bytes)
cdef _addr_spec(list kinds, list texts, Py_ssize_t a, Py_ssize_t b, list out)

@cython.locals(j=Py_ssize_t, angle=Py_ssize_t, route=bint, kind=int, nxt=Py_ssize_t, spec=list, a=Py_ssize_t,
               e=Py_ssize_t, r=Py_ssize_t, k=Py_ssize_t, parts=list, nwords=Py_ssize_t, first=Py_ssize_t,
               last_comment=Py_ssize_t, has_at=bint)
cdef Py_ssize_t _mailbox(list kinds, list texts, Py_ssize_t i, Py_ssize_t n, list out) except -2

@cython.locals(kinds=list, texts=list, out=list, n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, kind=int)
cpdef list parse_addresses(bytes v)

@cython.locals(p='const unsigned char*', n=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, k=Py_ssize_t, e=Py_ssize_t,
               tmp=list, params=list, typ=bytes, sub=bytes, name=bytes)
cpdef tuple content_value(bytes v, bint slash)

@cython.locals(esc=bint, safe=bint, ch=Py_UCS4, c=int, n=Py_ssize_t)
cdef _render_text(str v, list out)

@cython.locals(p='const unsigned char*', n=Py_ssize_t, safe=bint, i=Py_ssize_t, c=int)
cdef _render_bytes(bytes v, list out)

@cython.locals(n=Py_ssize_t, i=Py_ssize_t)
cdef _render(object v, list out)

@cython.locals(out=list)
cpdef bytes render(object value)
