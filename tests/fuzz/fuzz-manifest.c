/*
 * fuzz-manifest: libFuzzer target for the manifest parser.
 *
 * Whatever nj_manifest_from_json() accepts must satisfy the manifest's
 * invariants, serialise with nj_manifest_to_json(), parse again, and
 * serialise to the same text (a fixed point after one round).  Refusals
 * must carry a message.  The input is copied to an exact-size buffer
 * with no NUL after it, so ASan sees any read past its length.
 */
#include "nj-manifest.h"
#include "nj-store.h"
#include "nj-util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what)
{
    fprintf(stderr, "fuzz-manifest: %s (last error: %s)\n", what,
            nj_error_get());
    abort();
}

static void check_invariants(const struct nj_manifest *m)
{
    if (!nj_store_name_valid(m->id) ||
        (m->parent && !nj_store_name_valid(m->parent)))
        fail("accepted an invalid id");
    bool needs_parent = m->level == NJ_LEVEL_INC || m->level == NJ_LEVEL_DIFF;
    if (needs_parent != (m->parent != NULL))
        fail("accepted a parent that does not fit the level");
    if (!m->domain_name || !m->domain_uuid)
        fail("accepted a manifest without a domain");
    if (m->ndisks == 0 || m->ndisks > 4096)
        fail("accepted a disk count out of range");
    for (size_t i = 0; i < m->ndisks; i++) {
        const struct nj_manifest_disk *d = &m->disks[i];
        if (!d->target[0] || !nj_store_name_valid(d->index))
            fail("accepted an invalid target or index name");
        if (d->covered > d->size || (d->full && d->covered != d->size))
            fail("accepted coverage that does not fit the size");
        if ((m->level == NJ_LEVEL_FULL || m->level == NJ_LEVEL_COPY) &&
            !d->full)
            fail("accepted a partial disk in a full backup");
        for (size_t j = 0; j < i; j++)
            if (!strcmp(d->target, m->disks[j].target) ||
                !strcmp(d->index, m->disks[j].index))
                fail("accepted a duplicate disk");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = nj_malloc(size);
    if (size)
        memcpy(text, data, size);
    nj_error("%s", "");
    struct nj_manifest *m = nj_manifest_from_json(text, size);
    free(text);
    if (!m) {
        if (!*nj_error_get())
            fail("refused without a message");
        return 0;
    }
    check_invariants(m);
    char *j1 = nj_manifest_to_json(m);
    struct nj_manifest *m2 = nj_manifest_from_json(j1, strlen(j1));
    if (!m2)
        fail("its own JSON does not parse");
    char *j2 = nj_manifest_to_json(m2);
    if (strcmp(j1, j2) != 0)
        fail("JSON changed on the second round");
    free(j2);
    free(j1);
    nj_manifest_free(m2);
    nj_manifest_free(m);
    return 0;
}
