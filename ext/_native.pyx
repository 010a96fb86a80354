# cython: language_level=3
"""Cython filter and score kernels over the node table's arrays.

The twin in scheduler/kernels/_python.py is the reference: keep this file in step with it line for
line (a property test checks both agree, scores exactly). Floating point runs in the same order.
"""

from libc.math cimport floor

cdef extern from *:
    int popcount "__builtin_popcountll"(unsigned long long x) nogil

cdef enum:
    MAX_ISLANDS = 8

cdef enum:
    OK = 0
    UNSCHEDULABLE = 1
    POOL = 2
    MODEL = 3
    PODS = 4
    CPU = 5
    MEMORY = 6
    GPU = 7
    TOPOLOGY = 8
    UNKNOWN = 255


cdef struct Table:
    long long* alloc_cpu
    long long* alloc_mem
    int* alloc_gpu
    int* alloc_pods
    long long* used_cpu
    long long* used_mem
    int* used_pods
    unsigned long long* gpu_mask
    unsigned long long* gpu_used
    unsigned long long* islands
    int* model
    int* pool
    unsigned char* flags
    double* load
    double* load_time


cdef class _Views:
    """Typed views of one NodeTable's arrays (taken per call: the table may have grown)."""
    cdef long long[::1] alloc_cpu, alloc_mem, used_cpu, used_mem
    cdef int[::1] alloc_gpu, alloc_pods, used_pods, model, pool
    cdef unsigned long long[::1] gpu_mask, gpu_used, islands
    cdef unsigned char[::1] flags
    cdef double[::1] load, load_time
    cdef Table tab

    def __cinit__(self, t):
        self.alloc_cpu = t.alloc_cpu
        self.alloc_mem = t.alloc_mem
        self.alloc_gpu = t.alloc_gpu
        self.alloc_pods = t.alloc_pods
        self.used_cpu = t.used_cpu
        self.used_mem = t.used_mem
        self.used_pods = t.used_pods
        self.gpu_mask = t.gpu_mask
        self.gpu_used = t.gpu_used
        self.islands = t.islands
        self.model = t.model
        self.pool = t.pool
        self.flags = t.flags
        self.load = t.load
        self.load_time = t.load_time
        self.tab.alloc_cpu = &self.alloc_cpu[0]
        self.tab.alloc_mem = &self.alloc_mem[0]
        self.tab.alloc_gpu = &self.alloc_gpu[0]
        self.tab.alloc_pods = &self.alloc_pods[0]
        self.tab.used_cpu = &self.used_cpu[0]
        self.tab.used_mem = &self.used_mem[0]
        self.tab.used_pods = &self.used_pods[0]
        self.tab.gpu_mask = &self.gpu_mask[0]
        self.tab.gpu_used = &self.gpu_used[0]
        self.tab.islands = &self.islands[0]
        self.tab.model = &self.model[0]
        self.tab.pool = &self.pool[0]
        self.tab.flags = &self.flags[0]
        self.tab.load = &self.load[0]
        self.tab.load_time = &self.load_time[0]


cdef inline int _best_island(const Table* t, int s, unsigned long long free, int gpu,
                             int* size) noexcept nogil:
    cdef int best = -1
    cdef int k, c
    cdef unsigned long long isl
    size[0] = 0
    for k in range(MAX_ISLANDS):
        isl = t.islands[s * MAX_ISLANDS + k]
        if isl == 0:
            continue
        c = popcount(isl & free)
        if c >= gpu and (best < 0 or c < best):
            best = c
            size[0] = popcount(isl)
    return best


cdef inline unsigned char _verdict(const Table* t, int s, long long cpu, long long mem, int gpu,
                                   int topo, const unsigned char[::1] pool_ok,
                                   const unsigned char[::1] model_ok) noexcept nogil:
    cdef unsigned long long free
    cdef int m, size
    if s < 0 or not (t.flags[s] & 1):
        return UNKNOWN
    if t.flags[s] & 2:
        return UNSCHEDULABLE
    if pool_ok[t.pool[s]] == 0:
        return POOL
    if gpu > 0 and model_ok.shape[0] > 0:
        m = t.model[s]
        if m < 0 or m >= model_ok.shape[0] or model_ok[m] == 0:
            return MODEL
    if t.used_pods[s] + 1 > t.alloc_pods[s]:
        return PODS
    if t.used_cpu[s] + cpu > t.alloc_cpu[s]:
        return CPU
    if t.used_mem[s] + mem > t.alloc_mem[s]:
        return MEMORY
    if gpu > 0:
        free = t.gpu_mask[s] & ~t.gpu_used[s]
        if popcount(free) < gpu:
            return GPU
        if topo == 2 and _best_island(t, s, free, gpu, &size) < 0:
            return TOPOLOGY
    return OK


def filter_nodes(t, const int[::1] slots, long long cpu, long long mem, int gpu, int topo,
                 const unsigned char[::1] pool_ok, const unsigned char[::1] model_ok,
                 unsigned char[::1] out):
    cdef _Views v = _Views(t)
    cdef Py_ssize_t i, n = slots.shape[0]
    cdef int passed = 0
    cdef unsigned char r
    with nogil:
        for i in range(n):
            r = _verdict(&v.tab, slots[i], cpu, mem, gpu, topo, pool_ok, model_ok)
            out[i] = r
            if r == OK:
                passed += 1
    return passed


cdef inline void _gpu_parts(const Table* t, int s, int gpu, double* pack, double* fit) noexcept nogil:
    cdef unsigned long long free = t.gpu_mask[s] & ~t.gpu_used[s]
    cdef int nfree = popcount(free)
    cdef int cap = t.alloc_gpu[s]
    cdef int best, size
    pack[0] = 0.0
    fit[0] = 0.0
    if nfree < gpu or cap <= 0:
        return
    if nfree == cap and gpu < cap:
        pack[0] = 0.0
    else:
        pack[0] = <double>(10 * (cap - nfree + gpu)) / <double>cap
    best = _best_island(t, s, free, gpu, &size)
    if best >= 0:
        fit[0] = 10.0 * (1.0 - <double>(best - gpu) / <double>size)


cdef inline double _resource_part(const Table* t, int s, long long cpu, long long mem,
                                  bint most) noexcept nogil:
    cdef long long ac = t.alloc_cpu[s]
    cdef long long am = t.alloc_mem[s]
    cdef long long uc, um
    if ac <= 0 or am <= 0:
        return 0.0
    uc = t.used_cpu[s] + cpu
    um = t.used_mem[s] + mem
    if uc > ac or um > am:
        return 0.0
    if most:
        return (<double>(10 * uc) / <double>ac + <double>(10 * um) / <double>am) / 2.0
    return (<double>(10 * (ac - uc)) / <double>ac + <double>(10 * (am - um)) / <double>am) / 2.0


def score_nodes(t, const int[::1] slots, long long cpu, long long mem, int gpu, int topo,
                const unsigned char[::1] pool_ok, const double[::1] pool_avail,
                const double[::1] params, long long[::1] out):
    cdef _Views v = _Views(t)
    cdef const Table* tab = &v.tab
    cdef Py_ssize_t i, n = slots.shape[0]
    cdef int s, p
    cdef double total, wsum, pack, fit, res, lp, own, avail, load, r
    cdef bint most = params[6] > 0.0
    with nogil:
        for i in range(n):
            s = slots[i]
            if s < 0 or not (tab.flags[s] & 1):
                out[i] = 0
                continue
            total = 0.0
            wsum = 0.0
            if gpu > 0:
                _gpu_parts(tab, s, gpu, &pack, &fit)
                total += params[0] * pack + params[1] * fit
                wsum += params[0] + params[1]
            else:
                res = _resource_part(tab, s, cpu, mem, most)
                pack = 10.0 if tab.alloc_gpu[s] == 0 else 0.0
                total += params[5] * res + params[0] * pack
                wsum += params[5] + params[0]
            load = tab.load[s]
            if load >= 0.0 and params[7] - tab.load_time[s] <= params[8]:
                lp = 10.0 * (1.0 - load)
            else:
                lp = 5.0
            p = tab.pool[s]
            own = 10.0 if pool_ok[p] == 1 else 0.0
            avail = 10.0 * pool_avail[p]
            total += params[2] * lp + params[3] * own + params[4] * avail
            wsum += params[2] + params[3] + params[4]
            if wsum <= 0.0:
                out[i] = 0
                continue
            r = floor(total / wsum + 0.5)
            out[i] = 0 if r < 0 else (10 if r > 10 else <long long>r)


# ---- reply builders: JSON bytes written straight into one buffer (the twins are in _python.py) ----

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from libc.string cimport memcmp, memcpy

# Names are read through borrowed pointers: a `bytes` local would INCREF/DECREF every name object,
# a write to thousands of scattered cache lines per reply (about a third of prioritize_json's time).
cdef extern from "Python.h":
    PyObject* _item "PyList_GET_ITEM"(object, Py_ssize_t)
    char* _data "PyBytes_AS_STRING"(PyObject*)
    Py_ssize_t _size "PyBytes_GET_SIZE"(PyObject*)

cdef bytes _HOST = b'{"Host":'
cdef list _SCORE = [(',"Score":%d}' % k).encode() for k in range(11)]


def prioritize_json(list frags, const long long[::1] scores):
    """HostPriorityList: [{"Host":"n1","Score":7},...] from pre-quoted names."""
    cdef Py_ssize_t i, n = len(frags), total = 2, pos = 0, ln
    cdef long long s
    cdef PyObject* frag
    cdef PyObject* suffix
    cdef char* out
    for i in range(n):
        s = scores[i]
        s = 0 if s < 0 else (10 if s > 10 else s)
        total += 8 + _size(_item(frags, i)) + _size(_item(_SCORE, s)) + 1
    result = PyBytes_FromStringAndSize(NULL, total - (1 if n else 0))
    out = PyBytes_AS_STRING(result)
    out[pos] = b'['
    pos += 1
    for i in range(n):
        if i:
            out[pos] = b','
            pos += 1
        memcpy(out + pos, <char*>_HOST, 8)
        pos += 8
        frag = _item(frags, i)
        ln = _size(frag)
        memcpy(out + pos, _data(frag), ln)
        pos += ln
        s = scores[i]
        s = 0 if s < 0 else (10 if s > 10 else s)
        suffix = _item(_SCORE, s)
        ln = _size(suffix)
        memcpy(out + pos, _data(suffix), ln)
        pos += ln
    out[pos] = b']'
    return result


def pick_json(list frags, const unsigned char[::1] verdicts, unsigned char want):
    """The quoted names whose verdict is `want`, comma-separated (the inside of a JSON array)."""
    cdef Py_ssize_t i, n = len(frags), total = 0, pos = 0, ln, count = 0
    cdef PyObject* frag
    cdef char* out
    for i in range(n):
        if verdicts[i] == want:
            total += _size(_item(frags, i))
            count += 1
    if count == 0:
        return b""
    result = PyBytes_FromStringAndSize(NULL, total + count - 1)
    out = PyBytes_AS_STRING(result)
    for i in range(n):
        if verdicts[i] == want:
            if pos:
                out[pos] = b','
                pos += 1
            frag = _item(frags, i)
            ln = _size(frag)
            memcpy(out + pos, _data(frag), ln)
            pos += ln
    return result


cdef inline int _too_small(const Table* t, int s, int code, long long cpu, long long mem, int gpu) noexcept nogil:
    cdef int k, best = 0, c
    if code == CPU:
        return t.alloc_cpu[s] < cpu
    if code == MEMORY:
        return t.alloc_mem[s] < mem
    if code == GPU:
        return t.alloc_gpu[s] < gpu
    if code == TOPOLOGY:
        for k in range(MAX_ISLANDS):
            c = popcount(t.islands[s * MAX_ISLANDS + k])
            if c > best:
                best = c
        return best < gpu
    return 0


def reason_ids(t, const int[::1] slots, const unsigned char[::1] verdicts, long long cpu, long long mem,
               int gpu, int[::1] out):
    """Groups failed nodes by the sentence they get: out[i] indexes the returned list of
    (code, sample slot); -1 for nodes that passed. The sentence depends on the verdict, the pool or
    GPU model for those verdicts, and whether the node is too small even when empty."""
    cdef _Views v = _Views(t)
    cdef const Table* tab = &v.tab
    cdef Py_ssize_t i, j, n = slots.shape[0], k = 0
    cdef int s, code
    cdef long long key
    cdef long long keys[64]
    distinct = []
    for i in range(n):
        code = verdicts[i]
        s = slots[i]
        if code == OK:
            out[i] = -1
            continue
        if code == UNKNOWN or s < 0:
            key = UNKNOWN << 40
        elif code == POOL:
            key = (<long long>code << 40) | tab.pool[s]
        elif code == MODEL:
            key = (<long long>code << 40) | (tab.model[s] + 1)
        else:
            key = (<long long>code << 40) | _too_small(tab, s, code, cpu, mem, gpu)
        for j in range(k):
            if keys[j] == key:
                break
        else:
            j = k
            if k < 64:
                keys[k] = key
                k += 1
                distinct.append((code, s))
            else:
                j = 63  # more than 64 distinct sentences: the rest share the last one
        out[i] = <int>j
    return distinct


def failed_json(list frags, const int[::1] ids, list texts, const unsigned char[::1] hard):
    """The insides of FailedNodes and FailedAndUnresolvableNodes: "node":"reason",... for nodes whose
    ids[i] >= 0; texts[id] is the quoted reason, hard[id] 1 for unresolvable. Also the two counts."""
    cdef Py_ssize_t i, n = len(frags), ln
    cdef Py_ssize_t tot[2]
    cdef Py_ssize_t pos[2]
    cdef Py_ssize_t cnt[2]
    cdef int which, idx
    cdef PyObject* frag
    cdef PyObject* text
    cdef char* outs[2]
    tot[0] = tot[1] = 0
    pos[0] = pos[1] = 0
    cnt[0] = cnt[1] = 0
    for i in range(n):
        idx = ids[i]
        if idx < 0:
            continue
        which = hard[idx]
        cnt[which] += 1
        tot[which] += _size(_item(frags, i)) + 2 + _size(_item(texts, idx))
    soft_b = PyBytes_FromStringAndSize(NULL, tot[0] - 1 if tot[0] else 0)
    hard_b = PyBytes_FromStringAndSize(NULL, tot[1] - 1 if tot[1] else 0)
    outs[0] = PyBytes_AS_STRING(soft_b)
    outs[1] = PyBytes_AS_STRING(hard_b)
    for i in range(n):
        idx = ids[i]
        if idx < 0:
            continue
        which = hard[idx]
        if pos[which]:
            outs[which][pos[which]] = b','
            pos[which] += 1
        frag = _item(frags, i)
        ln = _size(frag)
        memcpy(outs[which] + pos[which], _data(frag), ln)
        pos[which] += ln
        outs[which][pos[which]] = b':'
        pos[which] += 1
        text = _item(texts, idx)
        ln = _size(text)
        memcpy(outs[which] + pos[which], _data(text), ln)
        pos[which] += ln
    return soft_b, hard_b, cnt[0], cnt[1]


# ---- NodeNames -> slots without a Python object per name (twin: map_names in _python.py) ----
# kube-scheduler checks nodes on 16 goroutines, so the order of NodeNames (and so its bytes) changes
# from call to call and the bytes-keyed cache misses; decoding 5,000 names into str, hashing them and
# quoting them again took ~1.6 ms. This reads the array in place and finds each name by a hash of its
# quoted bytes in an open-addressing table whose keys are copied into one contiguous buffer (the
# comparisons stay in cache instead of visiting thousands of scattered bytes objects).

from cpython.array cimport array as carray, clone, resize
from cpython.list cimport PyList_Append
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr

cdef carray _INT_TEMPLATE = carray("i")


cdef inline uint64_t _hash(const char* p, Py_ssize_t n) noexcept nogil:
    """8 bytes per step (multiply-xorshift); exactness comes from the memcmp, not from the hash."""
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL ^ <uint64_t>n, w
    while n >= 8:
        memcpy(&w, p, 8)
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL
        h ^= h >> 32
        p += 8
        n -= 8
    w = 0
    memcpy(&w, p, n)
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL
    return h ^ (h >> 29)


cdef class _NameIndex:
    cdef int* buckets
    cdef uint64_t* hashes  # per slot
    cdef Py_ssize_t* offset  # per slot, into keys
    cdef int* length  # per slot; 0: no node in that slot
    cdef char* keys
    cdef Py_ssize_t mask
    cdef readonly long long version
    cdef readonly list quoted

    def __cinit__(self, t):
        cdef list quoted = t.quoted
        cdef Py_ssize_t n = len(quoted), cap = 16, s, b, total = 0, at = 0
        cdef bytes q
        for s in range(n):
            if quoted[s] is not None:
                total += PyBytes_GET_SIZE(<bytes>quoted[s])
        while cap < 2 * n + 2:
            cap *= 2
        self.buckets = <int*>malloc(cap * sizeof(int))
        self.hashes = <uint64_t*>malloc((n + 1) * sizeof(uint64_t))
        self.offset = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
        self.length = <int*>malloc((n + 1) * sizeof(int))
        self.keys = <char*>malloc(total + 1)
        if not (self.buckets and self.hashes and self.offset and self.length and self.keys):
            raise MemoryError()
        self.mask = cap - 1
        self.version = t.version
        self.quoted = quoted
        for b in range(cap):
            self.buckets[b] = -1
        for s in range(n):
            self.length[s] = 0
            if quoted[s] is None:
                continue
            q = <bytes>quoted[s]
            self.offset[s] = at
            self.length[s] = <int>PyBytes_GET_SIZE(q)
            memcpy(self.keys + at, PyBytes_AS_STRING(q), self.length[s])
            at += self.length[s]
            self.hashes[s] = _hash(PyBytes_AS_STRING(q), self.length[s])
            b = self.hashes[s] & self.mask
            while self.buckets[b] >= 0:
                b = (b + 1) & self.mask
            self.buckets[b] = <int>s

    def __dealloc__(self):
        free(self.buckets)
        free(self.hashes)
        free(self.offset)
        free(self.length)
        free(self.keys)

    cdef inline int find(self, const char* p, Py_ssize_t n) noexcept nogil:
        cdef uint64_t h = _hash(p, n)
        cdef Py_ssize_t b = h & self.mask
        cdef int s
        while True:
            s = self.buckets[b]
            if s < 0:
                return -1
            if self.hashes[s] == h and self.length[s] == n and memcmp(self.keys + self.offset[s], p, n) == 0:
                return s
            b = (b + 1) & self.mask


cdef _NameIndex _index_of(t):
    cdef _NameIndex idx = getattr(t, "_name_index", None)
    # Rebuilt when the set of names changes (version) or the quoted list grew or was replaced.
    if idx is None or idx.version != t.version or idx.quoted is not t.quoted or len(t.quoted) != len(idx.quoted):
        # The quoted names are re-made in one burst so they sit next to each other in memory: reply
        # builders copy thousands of them per call in request order, and scattered objects (made one
        # by one as nodes arrived) cost a cache miss each (122 vs ~70 µs for 5,000 scores).
        t.quoted[:] = [None if q is None else bytes(bytearray(q)) for q in t.quoted]
        idx = _NameIndex(t)
        t._name_index = idx
    return idx


def map_names(t, bytes body, Py_ssize_t start, Py_ssize_t end):
    """body[start:end] is the inside of a NodeNames array as Go writes it ("a","b", no spaces, no
    escapes): its slots (-1 for names not in the table), names and quoted names, the table's own
    objects where the name is known. None for anything else: the caller takes the general JSON path."""
    if start < 0 or end > PyBytes_GET_SIZE(body) or start > end:
        return None
    cdef _NameIndex idx = _index_of(t)
    cdef const char* p = PyBytes_AS_STRING(body)
    cdef const char* close
    cdef Py_ssize_t pos = start, q, i, count = 0
    cdef int s
    cdef list names = [], frags = [], tnames = t.names, quoted = idx.quoted
    cdef carray slots = clone(_INT_TEMPLATE, (end - start) // 2 + 1, False)
    while pos < end:
        if p[pos] != b'"':
            return None
        q = pos
        close = <const char*>memchr(p + pos + 1, b'"', end - pos - 1)
        if close == NULL:
            return None
        pos = close - p + 1
        for i in range(q + 1, pos - 1):
            if p[i] == b'\\' or <unsigned char>p[i] < 0x20:
                return None
        s = idx.find(p + q, pos - q)
        if s >= 0:
            PyList_Append(names, tnames[s])
            PyList_Append(frags, quoted[s])
        else:
            try:
                PyList_Append(names, body[q + 1:pos - 1].decode("utf-8"))
            except UnicodeDecodeError:
                return None
            PyList_Append(frags, body[q:pos])
        slots.data.as_ints[count] = s
        count += 1
        if pos < end:
            if p[pos] != b',' or pos + 1 == end:
                return None
            pos += 1
    resize(slots, count)
    return slots, names, frags
