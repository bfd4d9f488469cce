#include "ipactr_archive.h"
#include <archive.h>

void ipactr_archive_set_error(struct archive *a, int errnum, const char *message) {
    archive_set_error(a, errnum, "%s", message);
}
