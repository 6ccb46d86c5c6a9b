# C types for data.py (Cython pure-Python mode: this file augments the .py source when compiled).

cimport cython
from libc.string cimport memchr

cdef class DataDecoder:
    cdef readonly Py_ssize_t max_size
    cdef readonly bint normalize_bare_lf
    cdef readonly bint done
    cdef readonly bint too_big
    cdef readonly bint bare_lf
    cdef readonly bint bare_cr
    cdef readonly Py_ssize_t size
    cdef int _state
    cdef Py_ssize_t _nbare
    cdef list _parts

    cpdef reset(self)

    @cython.locals(n=Py_ssize_t, p=Py_ssize_t, e=Py_ssize_t, state=int)
    cpdef Py_ssize_t feed(self, bytes data) except -1

    @cython.locals(start=Py_ssize_t, nbare=Py_ssize_t, k=Py_ssize_t, crlf=bint, end=Py_ssize_t,
                   j=Py_ssize_t, e=Py_ssize_t, trail_cr=int, need_lf=bint)
    cdef Py_ssize_t _scan_run(self, bytes data, Py_ssize_t p, Py_ssize_t n) except -1

    @cython.locals(nbare=Py_ssize_t)
    cdef _store(self, bytes data, Py_ssize_t p, Py_ssize_t e)

    @cython.locals(size=Py_ssize_t, keep=Py_ssize_t)
    cdef _append(self, bytes seg)

    cpdef bytes getvalue(self)

@cython.locals(n=Py_ssize_t, k=Py_ssize_t)
cdef Py_ssize_t _find_nl_dot(bytes body, Py_ssize_t start)

cpdef bytes dot_stuff(bytes body)

@cython.locals(i=Py_ssize_t, start=Py_ssize_t, lead=bint)
cpdef list dot_stuff_parts(bytes body)

@cython.locals(nl=Py_ssize_t, bare=Py_ssize_t)
cpdef tuple crlf_normalize(bytes data, bint after_cr=*)
