# C types for imap.py (Cython pure-Python mode: this file augments the .py source when compiled).
# `s` is the bytes object in the pure twin and a pointer to its data when compiled: s[i] is a byte either way.
# setup.py compiles with wraparound=False: no negative indexes in imap.py.

cimport cython


cdef class Literal:
    cdef readonly bytes data
    cdef readonly bint binary


cdef class Command:
    cdef readonly bytes tag
    cdef readonly str name
    cdef readonly list args


cdef class NeedContinuation:
    cdef readonly bytes tag
    cdef readonly object size


cdef class FetchAtt:
    cdef readonly str name
    cdef readonly str section
    cdef readonly tuple part
    cdef readonly object text
    cdef readonly object fields
    cdef readonly object partial


cdef bytes _CLASS, _FTEXT, _ASTRING_SAFE, _QSAFE, _HIGH
cdef dict _NAMES
cdef object _SECTION_NAMES, _SECTION_TEXTS, _UNESCAPE, _B64_CHARS
cdef unsigned long long _MAX63

cdef Py_ssize_t _find_lf(object buf, Py_ssize_t start, Py_ssize_t n) except -2

cdef bytes _slice(object buf, Py_ssize_t a, Py_ssize_t b)

cdef int _byte(object buf, Py_ssize_t i) except -1

@cython.locals(s='const unsigned char*', k=Py_ssize_t, e=Py_ssize_t, j=Py_ssize_t, size='unsigned long long',
               sync=bint, binary=bint)
cdef (Py_ssize_t, Py_ssize_t, bint, bint) _announcement(bytes seg, Py_ssize_t lo, Py_ssize_t n) noexcept

@cython.locals(s='const unsigned char*', t='const unsigned char*', i=Py_ssize_t)
cdef object _peek_tag(bytes seg, Py_ssize_t n)

cdef str _word(bytes seg, Py_ssize_t a, Py_ssize_t b)

@cython.locals(s='const unsigned char*', t='const unsigned char*', j=Py_ssize_t, c=int, esc=bint, high=bint,
               text=bytes)
cdef Py_ssize_t _quoted(bytes seg, Py_ssize_t i, Py_ssize_t n, list out) except -1

cdef object _section_number(str text)

@cython.locals(uname=str, part=tuple, spec=object, pieces=list, k=Py_ssize_t, numbers=list, names=list,
               rendered=list, name_str=str, section=str)
cdef object _fetch_att(str name, list items, object partial)


cdef class CommandReader:
    cdef object _buf
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _scan
    cdef Py_ssize_t _max_line
    cdef Py_ssize_t _max_literal
    cdef Py_ssize_t _max_total
    cdef int _state
    cdef Py_ssize_t _remaining
    cdef list _parts
    cdef bint _binary
    cdef bint _disc_lit
    cdef object _tag
    cdef str _name
    cdef list _stack
    cdef int _tstate
    cdef bint _fetch
    cdef Py_ssize_t _sec
    cdef str _sec_name
    cdef Py_ssize_t _linelen
    cdef Py_ssize_t _littotal

    cdef int _reset(self) except -1

    cdef int _abort(self, bint skip, Py_ssize_t size) except -1

    @cython.locals(n=Py_ssize_t, pos=Py_ssize_t, k=Py_ssize_t, state=int)
    cpdef feed(self, bytes data)

    cpdef bytes take_buffer(self)

    @cython.locals(state=int, pos=Py_ssize_t, n=Py_ssize_t, i=Py_ssize_t, end=Py_ssize_t, seg=bytes)
    cpdef next(self)

    @cython.locals(pos=Py_ssize_t, n=Py_ssize_t, i=Py_ssize_t, end=Py_ssize_t, size=Py_ssize_t)
    cpdef next_line(self)

    @cython.locals(size=Py_ssize_t, limit=Py_ssize_t, k=Py_ssize_t)
    cdef int _check_partial(self, object buf, Py_ssize_t pos, Py_ssize_t n) except -1

    @cython.locals(n=Py_ssize_t, first=bint, lit=Py_ssize_t, size=Py_ssize_t, sync=bint, binary=bint,
                   end=Py_ssize_t, i=Py_ssize_t)
    cdef _segment(self, bytes seg)

    @cython.locals(remaining=Py_ssize_t, pos=Py_ssize_t, avail=Py_ssize_t, k=Py_ssize_t)
    cdef bint _take_literal(self) except -1

    @cython.locals(parts=list, data=bytes)
    cdef int _end_literal(self) except -1

    @cython.locals(remaining=Py_ssize_t, pos=Py_ssize_t, avail=Py_ssize_t, k=Py_ssize_t)
    cdef bint _skip(self) except -1

    @cython.locals(pos=Py_ssize_t, n=Py_ssize_t, i=Py_ssize_t, lo=Py_ssize_t, end=Py_ssize_t, tail=bytes,
                   lit=Py_ssize_t, size=Py_ssize_t, sync=bint, binary=bint)
    cdef bint _discard(self) except -1

    @cython.locals(s='const unsigned char*', t='const unsigned char*', i=Py_ssize_t, a=Py_ssize_t, raw=bytes,
                   name=str, sub=str)
    cdef Py_ssize_t _head(self, bytes seg, Py_ssize_t n) except -1

    @cython.locals(s='const unsigned char*', t='const unsigned char*', stack=list, state=int, c=int,
                   start=Py_ssize_t, sec_top=bint, word=str, lst=list, items=list)
    cdef int _tokens(self, bytes seg, Py_ssize_t i, Py_ssize_t n) except -1

    @cython.locals(s='const unsigned char*', stack=list, items=list, j=Py_ssize_t, a=Py_ssize_t, b=Py_ssize_t)
    cdef Py_ssize_t _section_end(self, bytes seg, Py_ssize_t i, Py_ssize_t n) except -1
