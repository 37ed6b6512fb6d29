#!/usr/bin/env bash
# offload connect end to end (issue 6): a local "cloud host" (tools/cloud: its own network and
# mount namespaces, OpenSSH sshd, dockerd; the laptop folders hidden under tmpfs there), the
# laptop runs `offload connect` to it, and the real docker CLI and docker-compose work through
# the docker API proxy:
#   - docker run -v shows exactly the laptop files; docker inspect shows a mountd path as source
#     (so a proxy that rewrote nothing could not pass: the cloud cannot see the laptop folder)
#   - --mount type=bind,readonly refuses writes; a missing --mount source gives docker's error
#   - a single-file bind shows only that file and follows an editor's atomic save
#   - a container's writes reach the laptop; a laptop edit reaches a running container, and an
#     inotifywait watching the bind in the container sees it
#   - docker run -i with stdin, docker exec
#   - -p 18080:80 with busybox httpd answers on the laptop; docker-compose up with a bind and a port
#   - the tunnel cut and restored: docker works again and the shares still serve
#   - the cloud side's mount killed: reported and mounted again
#   - offload disconnect, and the idle timeout: nothing of the session left on the cloud host
set -euo pipefail
. "$(dirname "$0")/lib.sh"
t_setup
CLOUD=$T/cloud LAP=$T/laptop RBASE=$T/rbase
CLOUD_TOOL=$OFFLOAD_SRC/tools/cloud
export HOME=$T/home # the docker CLI's contexts and config stay in the test
mkdir -p "$HOME" "$LAP/src/sub" "$LAP/out" "$LAP/www" "$LAP/compose" "$LAP/cfg"
printf 'setting 1\n' >"$LAP/cfg/app.conf"
printf 'not shared\n' >"$LAP/cfg/secret.txt"
for i in $(seq 40); do printf 'file %d\n' "$i" >"$LAP/src/sub/f$i.txt"; done
printf 'live 0\n' >"$LAP/src/live.txt"
head -c 3000000 /dev/urandom >"$LAP/src/blob.bin"
printf '<h1>hello from the laptop</h1>\n' >"$LAP/www/index.html"

cloud_down() {
	local rc=$?
	"$OFFLOAD_BIN" disconnect >/dev/null 2>&1 || true
	"$CLOUD_TOOL" down "$CLOUD" >/dev/null 2>&1 || true
	return "$rc"
}
# (set +e: under errexit a failing cloud_down would end the trap before t_cleanup, leaking the
# relays, whose open stdout then keeps ctest waiting)
trap 'rc=$?; set +e; cloud_down; (exit $rc); t_cleanup' EXIT
trap 'set +e; cloud_down; t_cleanup; trap - EXIT; exit 130' INT
trap 'set +e; cloud_down; t_cleanup; trap - EXIT; exit 143' TERM

"$CLOUD_TOOL" up "$CLOUD" --hide "$LAP" >"$T/cloud.out" 2>&1 || fail "tools/cloud up: $(cat "$T/cloud.out")"
cloud() { "$CLOUD_TOOL" exec "$CLOUD" "$@"; }
[[ -z $(cloud ls -A "$LAP") ]] || fail "the cloud side can see the laptop folder"

# the ssh path goes through a relay, so the link can be cut
rport=$((20000 + RANDOM % 20000))
relay() { relay_start "$rport" "10.231.79.2:22" 0; }
relay
sed "s/HostName .*/HostName 127.0.0.1/; s/Port 22/Port $rport/" "$CLOUD/ssh_config" >"$T/ssh_config"
sed "s/^10.231.79.2 /[127.0.0.1]:$rport /" "$CLOUD/known_hosts" >"$T/known_hosts"
sed -i "s#UserKnownHostsFile .*#UserKnownHostsFile $T/known_hosts#" "$T/ssh_config"

connect() { # extra args
	"$OFFLOAD_BIN" connect -F "$T/ssh_config" offload-cloud --remote-offload "$OFFLOAD_BIN" \
		--docker-socket "$CLOUD/docker/docker.sock" --remote-base "$RBASE" --detach "$@" \
		>"$T/connect.out" 2>&1 || fail "offload connect failed: $(cat "$T/connect.out")"
}
connect --idle 0
dk() { timeout 120 docker "$@"; }
[[ $(docker context show) == offload ]] || fail "docker context 'offload' not selected"
"$OFFLOAD_BIN" status >"$T/status" || fail "offload status: $(cat "$T/status")"

# --- the laptop files, exactly --------------------------------------------------------------------
(cd "$LAP/src" && find . -type f | sort | xargs md5sum) >"$T/laptop.sums"
dk run --rm --network none -v "$LAP/src:/app" offload-test:busybox \
	sh -c 'cd /app && find . -type f | sort | xargs md5sum' >"$T/container.sums" ||
	fail "docker run -v failed"
diff "$T/laptop.sums" "$T/container.sums" >/dev/null ||
	fail "the container does not see exactly the laptop files: $(diff "$T/laptop.sums" "$T/container.sums" | head -5)"
pass "docker run -v \$PWD/src:/app: the container sees exactly the laptop files (md5 of all 42)"
# the cloud side's mount appeared before its snapshot (served over SFTP meanwhile): the share
# shows as live once the feed is in
for _ in $(seq 300); do "$OFFLOAD_BIN" status --json | grep -q '"live":false' || break; sleep 0.1; done
"$OFFLOAD_BIN" status >"$T/status" || fail "offload status: $(cat "$T/status")"
grep -q "^share: $LAP/src -> .*, live$" "$T/status" || fail "offload status: the share is not live: $(cat "$T/status")"
pass "offload status: the share is live once the feed's snapshot is in"

# --- the bind source is a mountd path ---------------------------------------------------------------
dk run -d --name keeper --network none -v "$LAP/src:/app" offload-test:busybox sleep 600 >/dev/null
src=$(dk inspect -f '{{range .Mounts}}{{.Source}}{{end}}' keeper)
[[ $src == "$RBASE"/* ]] || fail "bind source is '$src', not a path under the session's mounts ($RBASE)"
cloud grep -q " $src fuse" /proc/self/mounts || fail "'$src' is not a FUSE mount on the cloud host"
pass "docker inspect: the bind source is mountd's mount on the cloud host ($src)"

# --- read-only, missing source ---------------------------------------------------------------------
if dk run --rm --network none --mount "type=bind,source=$LAP/src,target=/app,readonly" \
	offload-test:busybox touch /app/nope 2>"$T/ro.err"; then
	fail "a write to a readonly --mount succeeded"
fi
[[ ! -e $LAP/src/nope ]] || fail "the readonly write reached the laptop"
dk run --rm --network none --mount "type=bind,source=$LAP/src,target=/app,readonly" \
	offload-test:busybox cat /app/live.txt >"$T/ro.out" || fail "readonly mount unreadable"
grep -q 'live 0' "$T/ro.out" || fail "readonly mount: unexpected content '$(cat "$T/ro.out")'"
if dk run --rm --network none --mount "type=bind,source=$LAP/missing,target=/app" \
	offload-test:busybox true 2>"$T/missing.err"; then
	fail "a missing --mount source was accepted"
fi
grep -q 'bind source path does not exist' "$T/missing.err" ||
	fail "missing source: not docker's error: $(cat "$T/missing.err")"
pass "--mount readonly refuses writes; a missing source gives docker's own error"

# --- container writes reach the laptop ---------------------------------------------------------------
dk run --rm --network none -v "$LAP/out:/out" offload-test:busybox \
	sh -c 'echo "from the container" >/out/result.txt && mkdir -p /out/d && echo x >/out/d/y' ||
	fail "a container write failed"
for _ in $(seq 100); do [[ -f $LAP/out/d/y ]] && break; sleep 0.1; done
assert_eq "from the container" "$(cat "$LAP/out/result.txt" 2>/dev/null)" "a container's write on the laptop"
[[ -f $LAP/out/d/y ]] || fail "a folder made in the container is not on the laptop"
pass "a container's writes reach the laptop"

# --- laptop edits reach a running container, inotify included ----------------------------------------
dk run -d --name watcher --network none -v "$LAP/src:/app" offload-test:busybox \
	inotifywait -m -r /app >/dev/null
sleep 1
printf 'live 1\n' >"$LAP/src/live.txt"
for _ in $(seq 50); do
	[[ $(dk exec keeper cat /app/live.txt) == "live 1" ]] && break
	sleep 0.1
done
assert_eq "live 1" "$(dk exec keeper cat /app/live.txt)" "a laptop edit in a running container"
# (logs to a file first: grep -q in a pipeline under pipefail fails when the writer gets SIGPIPE)
for _ in $(seq 50); do
	dk logs watcher >"$T/watcher.log" 2>&1 || true
	grep -q 'live.txt' "$T/watcher.log" && break
	sleep 0.1
done
grep -q 'live.txt' "$T/watcher.log" ||
	fail "inotifywait in the container saw no event for the laptop edit: $(dk logs watcher 2>&1 | head -3)"
pass "a laptop edit reaches a running container (docker exec sees it; inotifywait in it gets the event)"

# --- a single-file bind: live across an editor's atomic save, and nothing else of its folder -------
dk run -d --name filebind --network none -v "$LAP/cfg/app.conf:/etc/app.conf" offload-test:busybox \
	sleep 600 >/dev/null
assert_eq "setting 1" "$(dk exec filebind cat /etc/app.conf)" "a single-file bind"
fsrc=$(dk inspect -f '{{range .Mounts}}{{.Source}}{{end}}' filebind)
[[ $fsrc == "$RBASE"/* ]] || fail "single-file bind source is '$fsrc', not under $RBASE"
assert_eq "app.conf" "$(cloud ls "$(dirname "$fsrc")")" "what the cloud host sees of the file's folder"
printf 'setting 2\n' >"$LAP/cfg/.app.conf.swp" && mv "$LAP/cfg/.app.conf.swp" "$LAP/cfg/app.conf"
for _ in $(seq 50); do
	[[ $(dk exec filebind cat /etc/app.conf) == "setting 2" ]] && break
	sleep 0.1
done
assert_eq "setting 2" "$(dk exec filebind cat /etc/app.conf)" "a single-file bind after an atomic save"
dk rm -f filebind >/dev/null
pass "a single-file bind shows only that file and stays live across an editor's atomic save"

# --- streams: run -i, exec ------------------------------------------------------------------------------
assert_eq "hello" "$(echo hello | dk run -i --rm --network none offload-test:busybox cat)" "docker run -i"
assert_eq "file 7" "$(dk exec keeper cat /app/sub/f7.txt)" "docker exec"
# docker run -it on a pseudo-terminal (script), its output with ^@ and CR dropped
tty_out=$(timeout 60 script -qec "docker run -it --rm --network none -v '$LAP/src:/app' offload-test:busybox sh -c 'test -t 0 && cat /app/sub/f5.txt'" /dev/null </dev/null | tr -d '\r' | sed 's/^\^@//')
assert_eq "file 5" "$tty_out" "docker run -it with a terminal"
pass "docker run -i, docker run -it and docker exec stream through the tunnel"

# --- published ports, compose -----------------------------------------------------------------------------
dk run -d --name web -p 18080:80 -v "$LAP/www:/www" offload-test:busybox httpd -f -p 80 -h /www >/dev/null
page_on() { # PORT: 0 once GET /index.html on the laptop's 127.0.0.1:PORT is the laptop's page
	local page=""
	for _ in $(seq 100); do
		page=$( (printf 'GET /index.html HTTP/1.0\r\n\r\n'; sleep 1) | nc -w 3 127.0.0.1 "$1" 2>/dev/null || true)
		[[ $page == *"hello from the laptop"* ]] && return 0
		sleep 0.2
	done
	return 1
}
page_on 18080 || fail "-p 18080:80: no page on the laptop's 127.0.0.1:18080"
dk rm -f web >/dev/null
for _ in $(seq 50); do nc -z 127.0.0.1 18080 2>/dev/null || break; sleep 0.1; done
! nc -z 127.0.0.1 18080 2>/dev/null || fail "port 18080 still open on the laptop after the container went"
cat >"$LAP/compose/docker-compose.yml" <<EOF
version: "2.4"
services:
  web:
    image: offload-test:busybox
    command: httpd -f -p 80 -h /www
    ports: ["18081:80"]
    volumes: ["$LAP/www:/www:ro"]
EOF
state=$("$OFFLOAD_BIN" status --json | sed -n 's/.*"docker_host":"\([^"]*\)".*/\1/p')
(cd "$LAP/compose" && DOCKER_HOST=$state timeout 120 docker-compose -p offt up -d) >"$T/compose.out" 2>&1 ||
	fail "docker-compose up: $(cat "$T/compose.out")"
page_on 18081 || fail "compose: no page on 127.0.0.1:18081"
(cd "$LAP/compose" && DOCKER_HOST=$state timeout 120 docker-compose -p offt down) >>"$T/compose.out" 2>&1 ||
	fail "docker-compose down: $(cat "$T/compose.out")"
pass "-p 18080:80 with busybox httpd answers on the laptop; docker-compose up/down with a bind and a port"

# --- the tunnel cut and restored ----------------------------------------------------------------------------
kill -9 "$RELAY_PID"
sleep 2
assert_eq "file 3" "$(cloud cat "$src/sub/f3.txt")" "a cached file on the cloud host while the link is down"
relay
for _ in $(seq 100); do dk ps >/dev/null 2>&1 && break; sleep 0.3; done
dk ps >/dev/null || fail "docker does not answer after the link came back"
printf 'live 2\n' >"$LAP/src/live.txt"
for _ in $(seq 100); do
	[[ $(dk exec keeper cat /app/live.txt 2>/dev/null) == "live 2" ]] && break
	sleep 0.2
done
assert_eq "live 2" "$(dk exec keeper cat /app/live.txt)" "a laptop edit after the link came back"
pass "the tunnel cut and restored: cached files kept serving, docker and the live share came back"

# --- the cloud side's mount killed: reported, mounted again ------------------------------------------------
dk rm -f keeper watcher >/dev/null
# ([o]: the pattern must not match the command line of the tools/cloud wrapper that runs pgrep)
mpid=$(cloud pgrep -f "[o]ffload-endpoint:/$(basename "$src") " | head -n 1)
[[ -n $mpid ]] || fail "no mount process for $src on the cloud host"
cloud kill -9 "$mpid"
for _ in $(seq 150); do grep -q "mounting it again" /run/offload/connect/connect.log && break; sleep 0.1; done
grep -q "mounting it again" /run/offload/connect/connect.log ||
	fail "the killed mount was not reported: $(tail -n 3 /run/offload/connect/connect.log)"
out=""
for _ in $(seq 100); do
	out=$(dk run --rm --network none -v "$LAP/src:/app" offload-test:busybox cat /app/sub/f9.txt 2>&1) && break
	sleep 0.2
done
assert_eq "file 9" "$out" "a new container after the cloud side's mount was killed"
pass "the cloud side's mount killed: reported, mounted again, new containers see the files"

# --- disconnect: nothing of the session left on the cloud host -------------------------------------------------
"$OFFLOAD_BIN" disconnect || fail "offload disconnect failed"
[[ $(docker context show 2>/dev/null) != offload ]] || fail "the docker context still points at the session"
[[ -z $(ls -A "$RBASE" 2>/dev/null) ]] || fail "session files left on the cloud host: $(ls -A "$RBASE")"
! cloud grep -q " $RBASE" /proc/self/mounts || fail "a mount left on the cloud host"
pass "offload disconnect: no mount, cache or key left on the cloud host; the docker context is restored"

# --- the idle timeout -------------------------------------------------------------------------------------
connect --idle 3s
dk run --rm --network none -v "$LAP/src:/app" offload-test:busybox cat /app/live.txt >/dev/null
for _ in $(seq 150); do "$OFFLOAD_BIN" status >/dev/null 2>&1 || break; sleep 0.1; done
! "$OFFLOAD_BIN" status >/dev/null 2>&1 ||
	fail "the session did not end after 3 s idle: $("$OFFLOAD_BIN" status --json); $(tail -n 5 /run/offload/connect/connect.log)"
for _ in $(seq 50); do [[ -z $(ls -A "$RBASE" 2>/dev/null) ]] && break; sleep 0.1; done
[[ -z $(ls -A "$RBASE" 2>/dev/null) ]] || fail "idle end left files on the cloud host: $(ls -A "$RBASE")"
! cloud grep -q " $RBASE" /proc/self/mounts || fail "idle end left a mount on the cloud host"
pass "--idle 3s: the session ends by itself and leaves nothing on the cloud host"
