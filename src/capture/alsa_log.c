/* ALSA's library prints its own error messages on stderr ("ALSA lib confmisc.c:855:(parse_card) cannot find card
 * '0'", eight lines for one `default` device with no sound card behind it), outside the daemon's log and once per
 * attempt to open the device: a microphone unplugged over a weekend wrote tens of thousands of them into the
 * journal. The library's handler for them is a C variadic function, which stable Rust cannot define; this one
 * formats the message and hands it to the daemon's logger (src/capture/alsa_log.rs). */

#include <stdarg.h>
#include <stdio.h>

void sonitor_alsa_message(const char *file, int line, const char *function, int err, const char *message);

void sonitor_alsa_error_handler(const char *file, int line, const char *function, int err, const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    if (fmt == NULL || vsnprintf(message, sizeof message, fmt, ap) < 0)
        message[0] = '\0';
    va_end(ap);
    sonitor_alsa_message(file, line, function, err, message);
}
