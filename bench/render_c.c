/* render_c.c - the pure-C peer of bench/render.lua.
 *
 * Renders the benchmark postback (the same template and values as render.lua)
 * with core/ directly: the template is parsed once, every render goes through
 * pb_template_render into one reused pb_buf. This is the ceiling a binding
 * can approach: no Lua table lookups, no Lua string created per render.
 *
 *   build/bench/render_c [SECONDS [REPEATS]]   renders_per_sec=N len=N
 *   build/bench/render_c --print               the rendered string, once
 *
 * Each repeat renders for SECONDS of CPU time (clock(), default 1) and the
 * best repeat (default 3) is reported. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/buf.h"
#include "core/template.h"

static const char code[] =
    "https://track.example-network.com/postback?click_id={click_id}&payout={payout}"
    "&currency={currency}&offer={offer_id}&aff={aff_id}&sub1={aff_sub1}&sub2={aff_sub2}"
    "&ip={conversion_ip}&src=offerslook";

/* Fills vals (slot order) by macro name: the values render.lua uses. */
static int fill_values(const pb_template *t, pb_value *vals)
{
    size_t i;
    for (i = 0; i < t->nnames; i++) {
        const char *nm = t->src + t->names[i].off;
        size_t len = t->names[i].len;
        pb_value *v = &vals[i];
        memset(v, 0, sizeof *v);
#define IS(s) (len == sizeof(s) - 1 && memcmp(nm, s, len) == 0)
#define STR(x) (v->kind = PB_V_STRING, v->s = (x), v->len = strlen(x))
        if (IS("click_id"))
            STR("3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b9c");
        else if (IS("payout"))
            v->kind = PB_V_FLOAT, v->d = 1.25;
        else if (IS("currency"))
            STR("USD");
        else if (IS("offer_id"))
            v->kind = PB_V_INT, v->i = 10482;
        else if (IS("aff_id"))
            v->kind = PB_V_INT, v->i = 377;
        else if (IS("aff_sub1"))
            STR("spring sale \xE2\x80\x93 \xC3\xBCn\xC3\xAF\x63ode \xE2\x9C\x93");
        else if (IS("aff_sub2"))
            STR("banner_300x250");
        else if (IS("conversion_ip"))
            STR("203.0.113.45");
        else
            return -1;
#undef IS
#undef STR
    }
    return 0;
}

int main(int argc, char **argv)
{
    pb_template *t;
    pb_value vals[16];
    pb_render_opts ro = { PB_MISSING_EMPTY, PB_ENCODE_URL };
    pb_render_err err;
    pb_buf out;
    double seconds = 1.0, best = 0.0;
    int repeats = 3, r, print = 0;

    if (argc > 1 && strcmp(argv[1], "--print") == 0) {
        print = 1;
    } else {
        if (argc > 1) seconds = atof(argv[1]);
        if (argc > 2) repeats = atoi(argv[2]);
        if (seconds <= 0 || repeats < 1) {
            fprintf(stderr, "usage: %s [SECONDS [REPEATS]] | --print\n", argv[0]);
            return 2;
        }
    }
    t = pb_template_parse(code, sizeof code - 1, NULL);
    if (!t || t->nnames > 16 || fill_values(t, vals) != 0) {
        fprintf(stderr, "render_c: bad template\n");
        return 1;
    }
    pb_buf_init(&out, NULL);
    if (pb_template_render(t, vals, &ro, &out, &err) != PB_OK) {
        fprintf(stderr, "render_c: render failed (%d)\n", err.code);
        return 1;
    }
    if (print) {
        fwrite(out.data, 1, out.len, stdout);
        fputc('\n', stdout);
        pb_buf_free(&out);
        pb_template_free(t);
        return 0;
    }
    for (r = 0; r < repeats; r++) {
        clock_t start = clock(), limit = start + (clock_t)(seconds * CLOCKS_PER_SEC), now;
        long n = 0;
        do {
            int k;
            for (k = 0; k < 1000; k++) {
                pb_buf_reset(&out);
                if (pb_template_render(t, vals, &ro, &out, &err) != PB_OK) return 1;
            }
            n += 1000;
            now = clock();
        } while (now < limit);
        {
            double rate = (double)n / ((double)(now - start) / CLOCKS_PER_SEC);
            if (rate > best) best = rate;
        }
    }
    printf("renders_per_sec=%.0f len=%zu\n", best, out.len);
    pb_buf_free(&out);
    pb_template_free(t);
    return 0;
}
