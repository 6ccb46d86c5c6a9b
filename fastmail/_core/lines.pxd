# C types for lines.py (Cython pure-Python mode: this file augments the .py source when compiled).

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memchr

cdef class LineReader:
    cdef object _buf
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _scan
    cdef Py_ssize_t _max
    cdef bint _discard

    @cython.locals(i=Py_ssize_t, pos=Py_ssize_t)
    cpdef feed(self, bytes data)

    @cython.locals(pos=Py_ssize_t, n=Py_ssize_t, scan=Py_ssize_t, i=Py_ssize_t, end=Py_ssize_t, size=Py_ssize_t)
    cpdef readline(self)

    @cython.locals(pos=Py_ssize_t)
    cpdef bytes take_buffer(self)
