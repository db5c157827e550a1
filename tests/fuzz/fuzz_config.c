/*
 * fuzz_config.c - fuzz target of the config.json parser.  Any input must
 * parse or fail cleanly; an accepted config must validate, answer the
 * per-layer queries for every layer, and survive to_json -> parse unchanged
 * (the serialisation is exact for every value the parser accepts).
 */
#include "dsv4-build.h"
#include "engine/io/config.h"
#include "base/dsv4.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct dsv4_config c, back;
    char *json;

    if (dsv4_config_parse((const char *)data, size, &c))
        return 0;
    DSV4_ASSERT(dsv4_config_validate(&c) == 0);
    for (int l = 0; l < dsv4_config_total_layers(&c); l++) {
        int r = dsv4_config_ratio(&c, l);
        DSV4_ASSERT(r >= 0);
        (void)dsv4_config_is_hash_layer(&c, l);
    }
    json = dsv4_config_to_json(&c);
    DSV4_ASSERT(json != NULL);
    DSV4_ASSERT(dsv4_config_parse(json, strlen(json), &back) == 0);
    DSV4_ASSERT(memcmp(&c, &back, sizeof(c)) == 0);
    free(json);
    return 0;
}
