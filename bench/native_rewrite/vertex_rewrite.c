/* A prototype of the per-attempt rewrite as an Envoy dynamic module (HTTP filter ABI v0.x of
 * Envoy 1.40), for bench.dataplane's "native rewrite" row only (bench/dataplane/variants.py):
 * what the rewrite costs when it is native code instead of header_mutation + Lua. Run as an
 * upstream filter on the cluster a route names, once per attempt after the host is chosen, it
 * reads the chosen host's metadata (vertex: endpoint_path, host, upstream_path, tier) itself,
 * so no temporary headers exist, and sets :path and :authority as the Lua script does. Not the
 * product: no OpenAI-path branch.
 *
 * Only the declarations this file uses are written out here, in the ABI's own names. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct { const char *ptr; size_t length; } buf;           /* module- and Envoy-owned */
typedef struct { const char *key_ptr; size_t key_length; const char *value_ptr; size_t value_length; } hdr;
enum { REQUEST_HEADER = 0 };                                        /* http_header_type */
enum { SOURCE_DYNAMIC = 0, SOURCE_HOST = 3 };                       /* metadata_source */

bool envoy_dynamic_module_callback_http_get_header(void *f, int type, buf key, buf *out, size_t index,
                                                   size_t *count);
bool envoy_dynamic_module_callback_http_set_header(void *f, int type, buf key, buf value);
bool envoy_dynamic_module_callback_http_add_header(void *f, int type, buf key, buf value);
bool envoy_dynamic_module_callback_http_get_metadata_string(void *f, int source, buf ns, buf key, buf *out);
void envoy_dynamic_module_callback_http_set_dynamic_metadata_string(void *f, buf ns, buf key, buf value);
void envoy_dynamic_module_callback_http_send_response(void *f, uint32_t status, hdr *headers, size_t n,
                                                      buf body, buf details);

#define S(lit) ((buf){lit, sizeof(lit) - 1})
static const buf NONE = {NULL, 0};

const char *envoy_dynamic_module_on_program_init(void) { return "v0.2.0"; }

static const char CONFIG = 0;
const void *envoy_dynamic_module_on_http_filter_config_new(void *c, buf name, buf config) { return &CONFIG; }
void envoy_dynamic_module_on_http_filter_config_destroy(const void *c) {}
const void *envoy_dynamic_module_on_http_filter_per_route_config_new(buf name, buf config) { return &CONFIG; }
void envoy_dynamic_module_on_http_filter_per_route_config_destroy(const void *c) {}
const void *envoy_dynamic_module_on_http_filter_new(const void *c, void *f) { return &CONFIG; }
void envoy_dynamic_module_on_http_filter_destroy(const void *m) {}

static bool host_meta(void *f, buf key, buf *out) {
  return envoy_dynamic_module_callback_http_get_metadata_string(f, SOURCE_HOST, S("vertex"), key, out) &&
         out->length > 0;
}

static void reply_502(void *f) {
  hdr h[] = {{"content-type", 12, "application/json", 16}};
  envoy_dynamic_module_callback_http_send_response(
      f, 502, h, 1, S("{\"error\": {\"code\": 502, \"message\": \"selected upstream has no vertex metadata\"}}"),
      S("vertex_rewrite_no_metadata"));
}

int envoy_dynamic_module_on_http_filter_request_headers(void *f, const void *m, bool end_of_stream) {
  buf ep = NONE, up = NONE, host = NONE, tier = NONE, path = NONE, verb = NONE, query = NONE;
  /* Never carry a client's (or a previous attempt's) Authorization to another region. */
  envoy_dynamic_module_callback_http_set_header(f, REQUEST_HEADER, S("authorization"), NONE);
  bool has_ep = host_meta(f, S("endpoint_path"), &ep), has_up = host_meta(f, S("upstream_path"), &up);
  if ((!has_ep && !has_up) || !host_meta(f, S("host"), &host)) {
    reply_502(f);
    return 1; /* StopIteration */
  }
  if (host_meta(f, S("tier"), &tier)) {
    envoy_dynamic_module_callback_http_set_header(f, REQUEST_HEADER, S("x-vertex-ai-llm-request-type"), NONE);
    envoy_dynamic_module_callback_http_set_header(f, REQUEST_HEADER, S("x-vertex-ai-llm-shared-request-type"), NONE);
    if ((tier.length == 9 && !memcmp(tier.ptr, "dedicated", 9)) || (tier.length == 6 && !memcmp(tier.ptr, "shared", 6)))
      envoy_dynamic_module_callback_http_add_header(f, REQUEST_HEADER, S("x-vertex-ai-llm-request-type"), tier);
    else if (tier.length == 8 && !memcmp(tier.ptr, "priority", 8)) {
      envoy_dynamic_module_callback_http_add_header(f, REQUEST_HEADER, S("x-vertex-ai-llm-request-type"), S("shared"));
      envoy_dynamic_module_callback_http_add_header(f, REQUEST_HEADER, S("x-vertex-ai-llm-shared-request-type"),
                                                    S("priority"));
    }
  }
  /* The client's verb and query: kept in the request's dynamic metadata by the first attempt
   * (header edits persist across attempts); failing that, taken from :path. */
  if (!envoy_dynamic_module_callback_http_get_metadata_string(f, SOURCE_DYNAMIC, S("vertex.client"), S("verb"), &verb)
      || !envoy_dynamic_module_callback_http_get_metadata_string(f, SOURCE_DYNAMIC, S("vertex.client"), S("query"),
                                                                  &query)) {
    envoy_dynamic_module_callback_http_get_header(f, REQUEST_HEADER, S(":path"), &path, 0, NULL);
    const char *q = path.ptr ? memchr(path.ptr, '?', path.length) : NULL;
    size_t base = q ? (size_t)(q - path.ptr) : path.length;
    query = (buf){q, q ? path.length - base : 0};
    size_t i = base;
    while (i > 0 && ((path.ptr[i - 1] | 32) >= 'a' && (path.ptr[i - 1] | 32) <= 'z')) i--;
    verb = (i > 0 && i < base && path.ptr[i - 1] == ':') ? (buf){path.ptr + i, base - i} : S("predict");
    envoy_dynamic_module_callback_http_set_dynamic_metadata_string(f, S("vertex.client"), S("verb"), verb);
    envoy_dynamic_module_callback_http_set_dynamic_metadata_string(f, S("vertex.client"), S("query"), query);
  }
  char out[4096];
  size_t n = 0;
#define PUT(p, len) do { if (n + (len) >= sizeof(out)) { reply_502(f); return 1; } memcpy(out + n, p, len); n += len; } while (0)
  if (has_up) { /* a custom backend's whole path, "{verb}" standing for the client's verb */
    for (size_t i = 0; i < up.length;) {
      if (up.length - i >= 6 && !memcmp(up.ptr + i, "{verb}", 6)) { PUT(verb.ptr, verb.length); i += 6; }
      else { PUT(up.ptr + i, 1); i++; }
    }
  } else {
    PUT(ep.ptr, ep.length);
    PUT(":", 1);
    PUT(verb.ptr, verb.length);
  }
  if (query.length) PUT(query.ptr, query.length);
  envoy_dynamic_module_callback_http_set_header(f, REQUEST_HEADER, S(":path"), (buf){out, n});
  envoy_dynamic_module_callback_http_set_header(f, REQUEST_HEADER, S(":authority"), host);
  return 0; /* Continue */
}

/* The rest of the hooks Envoy resolves: nothing to do (0 is Continue for those with a status). */
int envoy_dynamic_module_on_http_filter_request_body(void) { return 0; }
int envoy_dynamic_module_on_http_filter_request_trailers(void) { return 0; }
int envoy_dynamic_module_on_http_filter_response_headers(void) { return 0; }
int envoy_dynamic_module_on_http_filter_response_body(void) { return 0; }
int envoy_dynamic_module_on_http_filter_response_trailers(void) { return 0; }
void envoy_dynamic_module_on_http_filter_stream_complete(void) {}
void envoy_dynamic_module_on_http_filter_http_callout_done(void) {}
void envoy_dynamic_module_on_http_filter_http_stream_headers(void) {}
void envoy_dynamic_module_on_http_filter_http_stream_data(void) {}
void envoy_dynamic_module_on_http_filter_http_stream_trailers(void) {}
void envoy_dynamic_module_on_http_filter_http_stream_complete(void) {}
void envoy_dynamic_module_on_http_filter_http_stream_reset(void) {}
void envoy_dynamic_module_on_http_filter_scheduled(void) {}
void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(void) {}
void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(void) {}
int envoy_dynamic_module_on_http_filter_local_reply(void) { return 0; }
