#!/usr/bin/env bash
# The docker API proxy (tunnel/dockerproxy.h, driven by tools/dproxy) between the real docker CLI
# (and docker-compose v1) and a private dockerd. dproxy maps bind sources under $L ("laptop") to
# $C ("cloud"); each laptop file has a cloud twin with different bytes, so a container that reads
# the cloud bytes proves the source was rewritten, and docker inspect shows the rewritten path.
# Also: read-only --mount, named volumes untouched, dockerd's own error for a missing --mount
# source, refusal of an unshared path, hijacked streams with half-close (run -i, exec -i),
# logs -f and events streaming, run -it on a tty, cp both ways, build (chunked upload), version
# negotiation, compose up/down.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/docker_lib.sh"
: "${DPROXY:=$(_t_default_bin dproxy)}"
[[ -x $DPROXY ]] || fail "no dproxy binary at '$DPROXY'"
t_setup
dockerd_start
docker_import_busybox

L=$T/laptop C=$T/cloud
mkdir -p "$L/src" "$C/src" "$L/ro" "$C/ro" "$L/proj/data" "$C/proj/data"
printf 'laptop copy\n' >"$L/src/x"
printf 'cloud copy\n' >"$C/src/x"
printf 'laptop ro\n' >"$L/ro/f"
printf 'cloud ro\n' >"$C/ro/f"
printf 'laptop compose\n' >"$L/proj/data/f"
printf 'cloud compose\n' >"$C/proj/data/f"

"$DPROXY" --listen "$T/proxy.sock" --upstream "$DOCKERD_SOCK" --map "$L=$C" -v \
	>"$T/dproxy.out" 2>"$T/dproxy.err" &
DPROXY_PID=$!
t_track "$DPROXY_PID"
for _ in $(seq 100); do grep -q '^dproxy: listening' "$T/dproxy.out" && break; sleep 0.05; done
grep -q '^dproxy: listening' "$T/dproxy.out" || fail "dproxy did not start: $(cat "$T/dproxy.err")"
assert_eq 600 "$(stat -c %a "$T/proxy.sock")" "mode of the proxy socket"
export DOCKER_HOST=unix://$T/proxy.sock
dk() { timeout 120 docker "$@"; }

# counters: "requests=N rewrites=N errors=N conns=N active=N", printed on SIGUSR1
counter() {
	local before
	before=$(grep -c '^requests=' "$T/dproxy.out" || true)
	kill -USR1 "$DPROXY_PID"
	for _ in $(seq 100); do
		(($(grep -c '^requests=' "$T/dproxy.out") > before)) && break
		sleep 0.02
	done
	grep '^requests=' "$T/dproxy.out" | tail -n 1 | tr ' ' '\n' | sed -n "s/^$1=//p"
}

# --- version negotiation ------------------------------------------------------------------------
assert_eq "$(docker_direct version --format '{{.Server.Version}} {{.Client.APIVersion}}')" \
	"$(dk version --format '{{.Server.Version}} {{.Client.APIVersion}}')" "docker version through the proxy"
pass "docker version: the same server and negotiated API version as without the proxy"

# --- -v: the cloud twin is what the container sees -------------------------------------------------
out=$(dk run --rm --network none -v "$L/src:/app" offload-test:busybox cat /app/x)
assert_eq "cloud copy" "$out" "docker run -v $L/src:/app cat /app/x"
dk run -d --name bindc --network none -v "$L/src:/app" offload-test:busybox sleep 300 >/dev/null
assert_eq "$C/src" "$(dk inspect -f '{{range .Mounts}}{{.Source}}{{end}}' bindc)" "inspect: mount source"
assert_eq "[\"$C/src:/app\"]" "$(dk inspect -f '{{json .HostConfig.Binds}}' bindc)" "inspect: HostConfig.Binds"
pass "-v: the container reads the rewritten source, docker inspect shows '$C/src'"

# --- --mount type=bind,readonly -----------------------------------------------------------------------
if out=$(dk run --rm --network none --mount "type=bind,source=$L/ro,target=/data,readonly" \
	offload-test:busybox sh -c 'cat /data/f; echo w >/data/new' 2>&1); then
	fail "a write into a readonly --mount succeeded: $out"
fi
[[ $out == *"cloud ro"* && $out == *"Read-only file system"* ]] || fail "readonly --mount: got '$out'"
[[ ! -e $C/ro/new && ! -e $L/ro/new ]] || fail "a write into a readonly --mount left a file"
dk create --name roc --network none --mount "type=bind,source=$L/ro,target=/data,readonly" \
	offload-test:busybox true >/dev/null
assert_eq "$C/ro false" "$(dk inspect -f '{{range .Mounts}}{{.Source}} {{.RW}}{{end}}' roc)" "inspect of a readonly --mount"
pass "--mount type=bind,readonly: rewritten to '$C/ro', read-only (the write failed)"

# --- named volume: untouched ------------------------------------------------------------------------
rw_before=$(counter rewrites)
dk run --rm --network none -v offload_vol:/v offload-test:busybox sh -c 'echo in-volume >/v/f'
assert_eq "in-volume" "$(dk run --rm --network none -v offload_vol:/v offload-test:busybox cat /v/f)" "named volume content"
dk create --name volc --network none -v offload_vol:/v offload-test:busybox true >/dev/null
assert_eq "volume offload_vol" "$(dk inspect -f '{{range .Mounts}}{{.Type}} {{.Name}}{{end}}' volc)" "inspect of a named volume"
assert_eq "$rw_before" "$(counter rewrites)" "rewrites counted for named volumes"
pass "named volume: passed untouched (no rewrite, a docker volume)"

# --- a missing --mount source: dockerd's own error ---------------------------------------------------
want=$(docker_direct run --rm --network none --mount "type=bind,source=$L/missing,target=/m" \
	offload-test:busybox true 2>&1 | grep 'Error response' || true)
got=$(dk run --rm --network none --mount "type=bind,source=$L/missing,target=/m" \
	offload-test:busybox true 2>&1 | grep 'Error response' || true)
[[ $want == *"bind source path does not exist: $L/missing" ]] || fail "dockerd's own error: '$want'"
assert_eq "$want" "$got" "error for a missing --mount source"
pass "missing --mount source: the proxy gives dockerd's error word for word"

# --- a source outside the shared folders: refused --------------------------------------------------
if out=$(dk run --rm --network none -v /etc:/x offload-test:busybox true 2>&1); then
	fail "a bind of /etc went through: $out"
fi
[[ $out == *"Error response from daemon: bind source '/etc' is outside the folders offload shares"* ]] ||
	fail "refusal of /etc: got '$out'"
pass "a bind source outside the map: refused with the callback's message"

# --- hijacked streams: run -i and exec -i with stdin piped (half-close) ---------------------------
out=$(echo hi | dk run -i --rm --network none offload-test:busybox cat)
assert_eq "hi" "$out" "echo hi | docker run -i cat"
head -c 200000 /dev/urandom | base64 >"$T/stdin.txt"
dk run -i --rm --network none offload-test:busybox cat <"$T/stdin.txt" >"$T/stdout.txt"
cmp "$T/stdin.txt" "$T/stdout.txt" || fail "docker run -i cat: 270 kB of stdin came back different"
pass "docker run -i: stdin piped through and closed, output byte for byte, the container exited"

assert_eq "cloud copy" "$(dk exec bindc cat /app/x)" "docker exec cat"
assert_eq "piped" "$(echo piped | dk exec -i bindc cat)" "echo piped | docker exec -i cat"
rc=0
dk exec bindc sh -c 'exit 3' || rc=$?
assert_eq 3 "$rc" "exit status of docker exec"
pass "docker exec: output, stdin with half-close, exit status"

# --- logs -f streams -----------------------------------------------------------------------------------
dk run -d --name logc --network none offload-test:busybox \
	sh -c 'echo first; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo second; sleep 300' >/dev/null
dk logs -f logc >"$T/logs.out" 2>&1 &
logs_pid=$!
for _ in $(seq 200); do grep -q first "$T/logs.out" && break; sleep 0.05; done
grep -q first "$T/logs.out" || fail "docker logs -f: no first line: $(cat "$T/logs.out")"
! grep -q second "$T/logs.out" || fail "docker logs -f: second line before it was written"
dk exec logc touch /tmp/go
for _ in $(seq 200); do grep -q second "$T/logs.out" && break; sleep 0.05; done
grep -q second "$T/logs.out" || fail "docker logs -f: the line written later never came"
kill -0 "$logs_pid" 2>/dev/null || fail "docker logs -f ended early"
dk rm -f logc >/dev/null
wait "$logs_pid" || true
pass "docker logs -f: a line written later arrives while the stream stays open"

# --- events streams; run -it over a pseudo-terminal -------------------------------------------------
dk events --filter container=evc --format '{{.Action}}' >"$T/events.out" 2>&1 &
events_pid=$!
sleep 0.5 # the events stream is open before the container exists
dk run --name evc --rm --network none offload-test:busybox true
for _ in $(seq 200); do grep -qx destroy "$T/events.out" && break; sleep 0.05; done
assert_eq "create attach start die destroy" "$(grep -xE 'create|attach|start|die|destroy' "$T/events.out" | tr '\n' ' ' | sed 's/ $//')" "docker events"
kill -0 "$events_pid" 2>/dev/null || fail "docker events ended early"
kill "$events_pid"
wait "$events_pid" 2>/dev/null || true
tty_run() { # docker run -it on a pseudo-terminal, its output with ^@ and CR dropped (the
	# terminal echoes a NUL the CLI writes, with or without the proxy)
	timeout 60 script -qec "docker run -it --rm --network none offload-test:busybox sh -c 'test -t 0 && echo tty-ok'" /dev/null </dev/null | tr -d '\r' | sed 's/^\^@//'
}
assert_eq "tty-ok" "$(tty_run)" "docker run -it with a terminal"
pass "docker events streams while open; docker run -it gets a terminal"

# --- cp both ways ----------------------------------------------------------------------------------------
head -c 3000000 /dev/urandom >"$T/cpin.bin"
dk cp "$T/cpin.bin" bindc:/tmp/cpin.bin
dk cp bindc:/tmp/cpin.bin "$T/cpout.bin"
cmp "$T/cpin.bin" "$T/cpout.bin" || fail "docker cp round trip differs"
pass "docker cp into and out of a container: 3 MB byte for byte"

# --- build (the context goes up chunked) --------------------------------------------------------------
mkdir -p "$T/ctx"
head -c 1000000 /dev/urandom >"$T/ctx/payload"
printf 'FROM offload-test:busybox\nCOPY payload /payload\nRUN ["cat", "/payload"]\n' >"$T/ctx/Dockerfile"
DOCKER_BUILDKIT=0 dk build -q -t offload-test:built "$T/ctx" >"$T/build.out" 2>&1 ||
	fail "docker build: $(cat "$T/build.out")"
grep -Eq 'POST /v[0-9.]+/build\?.* \(chunked body\)$' "$T/dproxy.err" ||
	fail "docker build's upload was not chunked: $(grep build "$T/dproxy.err")"
dk run --rm --network none offload-test:built cat /payload >"$T/payload.out"
cmp "$T/ctx/payload" "$T/payload.out" || fail "the built image's payload differs"
pass "docker build: chunked context upload, the image holds the payload byte for byte"

# --- docker-compose v1: up -d, the bind volume rewritten, down ------------------------------------------
cat >"$L/proj/docker-compose.yml" <<'EOF'
version: "2.4"
services:
  web:
    image: offload-test:busybox
    command: ["sleep", "300"]
    network_mode: none
    volumes:
      - ./data:/data
EOF
(cd "$L/proj" && timeout 180 docker-compose -p offloadtest up -d) >"$T/compose.out" 2>&1 ||
	fail "docker-compose up: $(cat "$T/compose.out")"
cid=$(dk ps -q --filter label=com.docker.compose.project=offloadtest)
[[ -n $cid ]] || fail "docker-compose up started no container: $(cat "$T/compose.out")"
assert_eq "$C/proj/data" "$(dk inspect -f '{{range .Mounts}}{{.Source}}{{end}}' "$cid")" "compose bind source"
assert_eq "cloud compose" "$(dk exec "$cid" cat /data/f)" "compose container reads"
(cd "$L/proj" && timeout 180 docker-compose -p offloadtest down) >>"$T/compose.out" 2>&1 ||
	fail "docker-compose down: $(cat "$T/compose.out")"
assert_eq "" "$(dk ps -aq --filter label=com.docker.compose.project=offloadtest)" "containers after compose down"
pass "docker-compose up -d / down: bind volume rewritten to '$C/proj/data'"

# --- the proxy's counters and a clean stop ------------------------------------------------------------
dk rm -f bindc roc volc >/dev/null
errors=$(counter errors) rewrites=$(counter rewrites)
# errors: the missing --mount source and /etc; rewrites: run -v, bindc, the readonly run, roc,
# compose (named volumes, cp, build and the refused ones rewrite nothing)
assert_eq 2 "$errors" "errors counted by the proxy"
assert_eq 5 "$rewrites" "rewrites counted by the proxy"
kill -TERM "$DPROXY_PID"
rc=0
wait "$DPROXY_PID" || rc=$?
assert_eq 0 "$rc" "dproxy exit status after SIGTERM"
[[ ! -e $T/proxy.sock ]] || fail "dproxy left its socket behind"
if grep -qE 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer' "$T/dproxy.err"; then
	fail "sanitizer report from dproxy: $(grep -A12 -E 'ERROR|runtime error' "$T/dproxy.err" | head -40)"
fi
pass "dproxy: $rewrites rewrites, $errors refusals, stopped cleanly, socket removed"
