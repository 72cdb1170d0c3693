/* Stand-ins for the Coral runtime libedgetpu.so.1, for tests/integration/test_edgetpu_probe.py.
 *
 * Compile one behaviour with -DSTANDIN_<NAME>:
 *   SEGV      the constructor raises SIGSEGV while the library is loaded, as a
 *             libedgetpu built for another TFLite version is reported to do;
 *   HANG      the constructor never returns (a load that hangs);
 *   NODEVICE  loads, but tflite_plugin_create_delegate fails as it does with no
 *             accelerator attached: load_delegate raises ValueError;
 *   HEALTHY   returns a delegate that claims no nodes, so the model runs on the
 *             CPU through the whole delegate path (a working runtime, minus the TPU).
 */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#if defined(STANDIN_SEGV)
__attribute__((constructor)) static void crash_on_load(void) { raise(SIGSEGV); }
#elif defined(STANDIN_HANG)
__attribute__((constructor)) static void hang_on_load(void) {
    for (;;) pause();
}
#endif

/* TfLiteDelegate from tensorflow/lite/core/c/common.h (TF 2.x): the fields the
 * interpreter reads. Prepare returning kTfLiteOk (0) without replacing any node
 * leaves the whole graph on the CPU. */
typedef struct TfLiteDelegate {
    void *data_;
    int (*Prepare)(void *context, struct TfLiteDelegate *delegate);
    void *CopyFromBufferHandle;
    void *CopyToBufferHandle;
    void *FreeBufferHandle;
    int64_t flags;
    void *opaque_delegate_builder;
} TfLiteDelegate;

static int prepare_nothing(void *context, TfLiteDelegate *delegate) {
    (void)context;
    (void)delegate;
    return 0;
}

void *tflite_plugin_create_delegate(char **keys, char **values, int n, void (*report_error)(const char *)) {
    (void)keys;
    (void)values;
    (void)n;
#if defined(STANDIN_HEALTHY)
    (void)report_error;
    TfLiteDelegate *d = calloc(1, sizeof *d);
    if (d) d->Prepare = prepare_nothing;
    return d;
#else
    (void)prepare_nothing;
    if (report_error) report_error("Failed to load delegate from libedgetpu.so.1 (stand-in: no Edge TPU attached)");
    return NULL;
#endif
}

void tflite_plugin_destroy_delegate(void *delegate) { free(delegate); }
