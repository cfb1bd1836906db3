/* The framing of plain output lines into execd events, in C.

   A command that prints a lot spends most of the server's time here: every line of its
   output becomes `HEAD line TAIL` (HEAD = `{"type":"stdout","text":"`, TAIL =
   `","timestamp":…}\n\n`), empty lines becoming nothing. `events.py` holds the same
   framing in Python and uses this module when it was built; both give the same bytes.

   Only output that JSON carries as it is goes this way: printable ASCII without `"` or
   `\`, lines ended by `\n`. For anything else `frame_plain_lines` answers None and the
   caller escapes line by line. The check is one pass that the compiler vectorises and
   that also counts the lines; the framing is then one `memchr` per line and the copies of
   head, line and tail into a result sized in advance. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* 32 bytes at once: GCC and Clang vector extensions, so the same code is SSE2, AVX2 or
   NEON as the machine allows. A comparison gives 0xFF in each lane where it holds. */
typedef unsigned char lanes_t __attribute__((vector_size(32)));
#define LANES ((Py_ssize_t)sizeof(lanes_t))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WIDEST_VECTORS __attribute__((target_clones("avx2", "default")))
#else
#define WIDEST_VECTORS
#endif

static inline int
needs_care(unsigned char c)
{
    return c < 0x20 || c > 0x7E || c == '"' || c == '\\';
}

/* How many bytes of `data` are `\n`, or -1 if any other byte would need escaping (or is
   not ASCII). One pass, no branch per byte: each lane counts its newlines for up to 255
   rounds before they are added up. */
WIDEST_VECTORS static Py_ssize_t
count_newlines_if_plain(const unsigned char *data, Py_ssize_t size)
{
    Py_ssize_t newlines = 0;
    Py_ssize_t at = 0;
    lanes_t careful = {0};
    while (size - at >= LANES) {
        Py_ssize_t rounds = (size - at) / LANES;
        if (rounds > 255) {
            rounds = 255;
        }
        lanes_t counts = {0};
        for (Py_ssize_t round = 0; round < rounds; round++, at += LANES) {
            lanes_t c;
            memcpy(&c, data + at, sizeof c);
            lanes_t newline = (lanes_t)(c == '\n');
            careful |= ((lanes_t)(c < 0x20) & ~newline) | (lanes_t)(c > 0x7E)
                       | (lanes_t)(c == '"') | (lanes_t)(c == '\\');
            counts -= newline;
        }
        for (Py_ssize_t lane = 0; lane < LANES; lane++) {
            newlines += counts[lane];
        }
    }
    for (Py_ssize_t lane = 0; lane < LANES; lane++) {
        if (careful[lane]) {
            return -1;
        }
    }
    for (; at < size; at++) {
        if (data[at] == '\n') {
            newlines++;
        }
        else if (needs_care(data[at])) {
            return -1;
        }
    }
    return newlines;
}

/* Writes HEAD carry line TAIL for each line of `data` (ended by `\n`, or by the end of
   `data`) that is not empty once `carry` (the first line's beginning, held from before) is
   put before the first; returns where it stopped writing. */
static char *
frame_lines(char *out, const unsigned char *data, Py_ssize_t size,
            const char *carry, Py_ssize_t carry_size,
            const char *head, Py_ssize_t head_size, const char *tail, Py_ssize_t tail_size)
{
    const unsigned char *line = data;
    const unsigned char *end = data + size;
    do {
        const unsigned char *stop = memchr(line, '\n', (size_t)(end - line));
        if (stop == NULL) {
            stop = end;
        }
        Py_ssize_t length = stop - line;
        if (length + carry_size > 0) {
            memcpy(out, head, (size_t)head_size);
            out += head_size;
            if (carry_size > 0) {
                memcpy(out, carry, (size_t)carry_size);
                out += carry_size;
                carry_size = 0;
            }
            memcpy(out, line, (size_t)length);
            out += length;
            memcpy(out, tail, (size_t)tail_size);
            out += tail_size;
        }
        carry_size = 0;
        line = stop + 1;
    } while (line < end);
    return out;
}

PyDoc_STRVAR(frame_plain_lines_doc,
"frame_plain_lines(head, tail, held, block, end, /)\n--\n\n"
"head + line + tail for each non-empty line of held + block[:end], joined, without\n"
"joining held and block first; None if they hold a byte that JSON would escape or that\n"
"is not ASCII (the caller then frames them itself).");

static PyObject *
frame_plain_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "frame_plain_lines takes head, tail, held, block, end");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < 4; i++) {
        if (!PyBytes_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "frame_plain_lines takes bytes");
            return NULL;
        }
    }
    const char *head = PyBytes_AS_STRING(args[0]);
    Py_ssize_t head_size = PyBytes_GET_SIZE(args[0]);
    const char *tail = PyBytes_AS_STRING(args[1]);
    Py_ssize_t tail_size = PyBytes_GET_SIZE(args[1]);
    const unsigned char *held = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    Py_ssize_t held_size = PyBytes_GET_SIZE(args[2]);
    const unsigned char *block = (const unsigned char *)PyBytes_AS_STRING(args[3]);
    Py_ssize_t size = PyLong_AsSsize_t(args[4]);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 0 || size > PyBytes_GET_SIZE(args[3])) {
        PyErr_SetString(PyExc_ValueError, "end lies outside the block");
        return NULL;
    }

    Py_ssize_t held_newlines = count_newlines_if_plain(held, held_size);
    Py_ssize_t newlines = count_newlines_if_plain(block, size);
    if (held_newlines < 0 || newlines < 0) {
        Py_RETURN_NONE;
    }
    newlines += held_newlines;
    /* At most one line more than there are newlines; every byte that is not a newline is
       text. Empty lines are skipped below and the result shrunk to what was written. */
    Py_ssize_t lines = newlines + 1;
    Py_ssize_t text = held_size + size - newlines;
    if (lines > (PY_SSIZE_T_MAX - text) / (head_size + tail_size + 1)) {
        return PyErr_NoMemory();
    }
    Py_ssize_t most = text + lines * (head_size + tail_size);
    PyObject *framed = PyBytes_FromStringAndSize(NULL, most);
    if (framed == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(framed);
    /* The lines that end inside `held` go out as they are; its unended rest begins the
       block's first line. */
    const unsigned char *rest = held;
    if (held_newlines > 0) {
        rest = (const unsigned char *)memrchr(held, '\n', (size_t)held_size) + 1;
        out = frame_lines(out, held, rest - 1 - held, NULL, 0,
                          head, head_size, tail, tail_size);
    }
    out = frame_lines(out, block, size, (const char *)rest, held + held_size - rest,
                      head, head_size, tail, tail_size);
    Py_ssize_t written = out - PyBytes_AS_STRING(framed);
    if (written != most && _PyBytes_Resize(&framed, written) < 0) {
        return NULL;
    }
    return framed;
}

static PyMethodDef framing_methods[] = {
    {"frame_plain_lines", (PyCFunction)(void (*)(void))frame_plain_lines, METH_FASTCALL,
     frame_plain_lines_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef framing_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_framing",
    .m_doc = "execd's event framing for plain output lines, in C (see events.py).",
    .m_size = 0,
    .m_methods = framing_methods,
};

PyMODINIT_FUNC
PyInit__framing(void)
{
    return PyModuleDef_Init(&framing_module);
}
