"""Data plane: requests/s, latency and proxy CPU per request, Envoy vs the Python smart router.

Every target answers `POST /v1/models/housing:predict` with a ~1 KB JSON body, and every
proxied request ends at the same fast backend (nginx from Debian, `return 200` with a static
~1 KB Vertex-like JSON answer; `--backend envoy` uses an Envoy with a direct_response instead):

  direct      the load generator straight to the backend: the floor
  static-1w   the reference: a hand-written static Envoy, 1 worker, doing the same single-region
              rewrite (route prefix_rewrite to the local region's Vertex path, host_rewrite_literal,
              a static "Authorization: Bearer" header, one static cluster); no retries, no failover,
              no access log. envoy-1w's CPU per request over this one's, in the same run, is the
              chain's overhead
  envoy-1w    this project's Envoy, 1 worker, programmed by the control plane (full filter
              chain: buffer, router with the retry policy, aggregate cluster, per-attempt
              header_mutation + credential_injector + Lua rewrite); both regions' address and
              port point at the backend, tls false
  envoy-2w    the same with 2 workers
  router-1p   bench/smart_router.py (aiohttp), 1 process
  router-2p   the same, 2 processes on one port (SO_REUSEPORT)

Cells run at 1, 16 and 64 connections, interleaved (per connection count, every target in
turn), so slow drifts of this shared machine hit all targets alike. Proxy CPU per request is
the proxy processes' CPU time (utime + stime from /proc/PID/stat, all threads) over the
measured run, divided by the requests served.

`--ablate` (on by default) also runs Envoys whose filter chain lacks one part more each
(same control plane, a builder that edits the built resources), at 16 connections: where
Envoy's CPU per request goes, without symbols (the wheel's Envoy is stripped). Its first row,
`+jwt` rows add instead: the same chain with a `clients:` section, every request carrying an
RS256 JWT that Envoy verifies, with jwt_authn's verified-token cache (as shipped) and without
it (the signature checked on every request).

`--no-openai` skips the two cells (envoy-1w, 16 connections, the same ~1 KB chat body) that
price the OpenAI front door's body reading: `POST /v1/chat/completions` (Envoy's
json_to_metadata parses the body for "model" and "stream" and the route is chosen again on
them) against the Vertex-native `POST /v1/models/gemini:generateContent` to the same model
cluster (route chosen on the path alone).

Alternative rewrites (ablation rows `lua, one header`, `native rewrite`, `native rewrite, -access
log`): `full` with only the per-attempt rewrite done another way; `native rewrite` compiles
bench/native_rewrite/vertex_rewrite.c (an Envoy dynamic module, a prototype) with `cc`. Every ablation
row also shows its CPU per request over static-1w's in the same round (median of the per-round
ratios), and the verdicts include envoy-1w's.

Load generator: wrk (installed from Debian when absent and running as root); without it the
Python load generator of control_plane/lab/loadgen.py runs in a separate process, and the output
says so (its own cost then bounds every number).

    python -m bench.dataplane [--duration 5] [--warmup 1] [--connections 1,16,64] [--rounds 1]
                              [--targets direct,static-1w,envoy-1w,envoy-2w,router-1p,router-2p] [--no-ablate]
                              [--variants '+jwt (no cache);+jwt;full;...']
                              [--no-openai]
"""
