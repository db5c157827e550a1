/*
 * test_error_ctx.c - dsv4_error_ctx, the "context: callee message" prefix
 * the file readers and the converter share: the callee's message kept after
 * the formatted context, the status name when the callee recorded none, the
 * status passed through, and truncation instead of overflow.
 */
#include "dsv4-build.h"
#include "base/dsv4.h"
#include "tests/test.h"

#include <string.h>

int main(void)
{
    char big[3000];

    CHECK_INT(dsv4_error(DSV4_ENOENT, "x.json: No such file"), DSV4_ENOENT);
    CHECK_INT(dsv4_error_ctx(DSV4_ENOENT, "reading %s", "cfg"), DSV4_ENOENT);
    CHECK(!strcmp(dsv4_errmsg(), "reading cfg: x.json: No such file"));

    dsv4_error_clear();
    CHECK_INT(dsv4_error_ctx(DSV4_EFORMAT, "tokenizer"), DSV4_EFORMAT);
    CHECKF(!strcmp(dsv4_errmsg(), "tokenizer: malformed data"), "%s", dsv4_errmsg());

    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    dsv4_error(DSV4_EIO, "%s", big);
    CHECK_INT(dsv4_error_ctx(DSV4_EIO, "%s", big), DSV4_EIO);
    CHECK(strlen(dsv4_errmsg()) > 0 && strlen(dsv4_errmsg()) < sizeof(big));
    TEST_DONE();
}
