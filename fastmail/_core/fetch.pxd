# C types for fetch.py (Cython pure-Python mode: this file augments the .py source when compiled).
# `s` / `o` are the bytes / bytearray objects in the pure twin and pointers to their data when compiled.
# setup.py compiles with boundscheck=False and wraparound=False: every write stays inside the capacity
# render_batch() computes first, and no index is negative.

cimport cython

@cython.locals(key=bytearray)
cpdef object record_blob(bytes value)

@cython.locals(s='const unsigned char*', n=Py_ssize_t, j=Py_ssize_t, m=Py_ssize_t, k=Py_ssize_t, hi=int, lo=int,
               b='unsigned char*', t='const unsigned char*', table=bytes)
cdef Py_ssize_t _blob_into(bytes value, bytearray key) except -2

cdef Py_ssize_t _copy(bytearray out, Py_ssize_t pos, bytes data, Py_ssize_t a, Py_ssize_t b)

cdef Py_ssize_t _put(bytearray out, Py_ssize_t pos, const unsigned char* data, Py_ssize_t a, Py_ssize_t b)

@cython.locals(o='unsigned char*', k=Py_ssize_t, v='unsigned long long', end=Py_ssize_t)
cdef Py_ssize_t _digits(bytearray out, Py_ssize_t pos, unsigned long long value)

@cython.locals(o='unsigned char*')
cdef Py_ssize_t _two(bytearray out, Py_ssize_t pos, long long value)

@cython.locals(s='const unsigned char*', v='long long', k=Py_ssize_t)
cdef (long long, Py_ssize_t) _number(bytes value, Py_ssize_t j, Py_ssize_t n)

@cython.locals(o='unsigned char*', days='long long', secs='long long', z='long long', era='long long',
               doe='long long', yoe='long long', year='long long', doy='long long', mp='long long',
               day='long long', month='long long', m=Py_ssize_t)
cdef Py_ssize_t _date(bytearray out, Py_ssize_t pos, long long seconds)

@cython.locals(nwant=Py_ssize_t, nview=Py_ssize_t, norder=Py_ssize_t, nflags=Py_ssize_t,
               nwire=Py_ssize_t, cap=Py_ssize_t, out=bytearray, o='unsigned char*', pos=Py_ssize_t,
               wi=Py_ssize_t, vi=Py_ssize_t, found=Py_ssize_t, k=Py_ssize_t, key=bytes, value=bytes,
               s='const unsigned char*', n=Py_ssize_t, j=Py_ssize_t, uid='long long', size='long long',
               date='long long', modseq='long long', flags_at=Py_ssize_t, flags_end=Py_ssize_t, code=int,
               w='const unsigned char*', wn=Py_ssize_t, wb='Py_buffer', wu='long long', last='long long',
               prefix='unsigned char[8]', have_prefix=bint, same=bint, need=Py_ssize_t, blob=bytearray, got=object)
cpdef object render_batch(object pairs, object wire_get, list want, const unsigned int[:] view, bytes order,
                          long long changedsince)

@cython.locals(s='const unsigned char*', o='unsigned char*', j=Py_ssize_t, first=bint, c=int)
cdef Py_ssize_t _flags(bytearray out, Py_ssize_t pos, bytes value, Py_ssize_t a, Py_ssize_t b)

@cython.locals(s='const unsigned char*', le=Py_ssize_t, lb=Py_ssize_t)
cdef Py_ssize_t _wire(bytearray out, Py_ssize_t pos, const unsigned char* wire, Py_ssize_t n, int code)
