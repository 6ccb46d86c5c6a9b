# C types for search.py (Cython pure-Python mode: this file augments the .py source when compiled).
# `s` / `o` / `t` are the bytes / bytearray objects in the pure twin and pointers to their data when compiled.
# setup.py compiles with boundscheck=False and wraparound=False: every write into `out` stays inside its
# length (checked before each address; the text of a field is never longer than the field's wire bytes).

cimport cython

@cython.locals(s='const unsigned char*', c=int, k='long long', d=int)
cdef Py_ssize_t _value_end(bytes wire, Py_ssize_t j, Py_ssize_t n)

@cython.locals(s='const unsigned char*', o='unsigned char*', j=Py_ssize_t, c=int)
cdef Py_ssize_t _lower_copy(bytearray out, Py_ssize_t pos, bytes wire, Py_ssize_t a, Py_ssize_t b, bint unescape)

@cython.locals(s='const unsigned char*', j=Py_ssize_t)
cdef bint _has_word(bytes wire, Py_ssize_t a, Py_ssize_t b)

@cython.locals(s='const unsigned char*', j=Py_ssize_t)
cdef bint _has_byte(bytes wire, Py_ssize_t a, Py_ssize_t b, int c)

@cython.locals(s='const unsigned char*', n=Py_ssize_t, k=Py_ssize_t, c=int, name=bytearray)
cdef int _charset(bytes wire, Py_ssize_t a, Py_ssize_t b)

cdef int _b64(int v)

cdef int _hex(int v)

@cython.locals(s='const unsigned char*', o='unsigned char*', j=Py_ssize_t, c=int, k=Py_ssize_t, cs=int, enc=int,
               pa=Py_ssize_t, pb=Py_ssize_t, start=Py_ssize_t, m=Py_ssize_t, size=Py_ssize_t, total=Py_ssize_t,
               acc='unsigned long', bits=int, q=Py_ssize_t, v=int, hi=int, lo=int)
cdef Py_ssize_t _decode_copy(bytearray out, Py_ssize_t pos, bytes wire, Py_ssize_t a, Py_ssize_t b)

@cython.locals(s='const unsigned char*', a=Py_ssize_t, b=Py_ssize_t)
cdef Py_ssize_t _string(bytearray out, Py_ssize_t pos, bytes wire, Py_ssize_t j, Py_ssize_t e, bint words)

@cython.locals(s='const unsigned char*', k=Py_ssize_t)
cdef bint _nonempty(bytes wire, Py_ssize_t j, Py_ssize_t e)

@cython.locals(o='unsigned char*', t='const unsigned char*', m=Py_ssize_t, i=Py_ssize_t, k=Py_ssize_t)
cdef bint _contains(bytearray out, Py_ssize_t n, bytes needle)

@cython.locals(s='const unsigned char*', o='unsigned char*', pos=Py_ssize_t, items=Py_ssize_t, na=Py_ssize_t,
               nb=Py_ssize_t, ma=Py_ssize_t, mb=Py_ssize_t, ha=Py_ssize_t, hb=Py_ssize_t, f=int, e=Py_ssize_t,
               mark=Py_ssize_t, addr_at=Py_ssize_t, host_at=Py_ssize_t, has_name=bint,
               has_addr=bint)
cdef Py_ssize_t _address_text(bytearray out, bytes wire, Py_ssize_t j, Py_ssize_t n)

@cython.locals(o='unsigned char*', i=Py_ssize_t, c=int, d=int)
cdef bint _special(bytearray out, Py_ssize_t n)

@cython.locals(t='const unsigned char*', i=Py_ssize_t)
cdef bint _ascii(bytes data)

@cython.locals(s='const unsigned char*', n=Py_ssize_t, le=Py_ssize_t, lb=Py_ssize_t)
cdef (Py_ssize_t, Py_ssize_t) _envelope_bounds(bytes wire)

@cython.locals(a=Py_ssize_t, b=Py_ssize_t, s='const unsigned char*', j=Py_ssize_t, e=Py_ssize_t, n=Py_ssize_t,
               o='unsigned char*', i=Py_ssize_t)
cpdef int match(bytearray out, bytes wire, int field, bytes needle)

@cython.locals(nwant=Py_ssize_t, nview=Py_ssize_t, ntests=Py_ssize_t, cap=Py_ssize_t, wi=Py_ssize_t,
               vi=Py_ssize_t, found=Py_ssize_t, key=bytes, value=bytes, s='const unsigned char*', n=Py_ssize_t,
               j=Py_ssize_t, k=Py_ssize_t, uid='long long', modseq='long long', mult='long long',
               wu='long long', last='long long', prefix=bytes, blob=bytes, w=bytes, verdict=int, t=Py_ssize_t,
               r=int, test=tuple, buf=bytearray, hits=list, unsure=list, values=list)
cpdef object search_batch(object pairs, object wire_get, list want, const unsigned int[:] view, list tests)

@cython.locals(s='const unsigned char*', c=int, e=Py_ssize_t, k=Py_ssize_t, p=Py_ssize_t, out=bytearray,
               items=list)
cdef tuple _py_value(bytes wire, Py_ssize_t j, Py_ssize_t n)

@cython.locals(a=Py_ssize_t, b=Py_ssize_t, s='const unsigned char*', j=Py_ssize_t, e=Py_ssize_t)
cpdef object field(bytes wire, Py_ssize_t index)
