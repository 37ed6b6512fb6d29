# shellcheck shell=bash
# Docker helpers for the integration tests: a private dockerd started as TESTING.md says, an
# offline busybox image, and a cleanup that leaves nothing behind. Sourced after lib.sh.
#
#   . "$(dirname "$0")/lib.sh"
#   . "$(dirname "$0")/docker_lib.sh"
#   t_setup
#   dockerd_start            # dockerd on unix://$DOCKERD_SOCK; the cleanup trap now stops it first
#   docker_import_busybox    # image offload-test:busybox (from /bin/busybox, no registry)
#   docker_direct run --rm --network none offload-test:busybox true
#
# dockerd keeps everything under $DOCKERD_DIR ($T/docker): data-root, exec-root (with the
# containerd it starts), pidfile and log (dockerd.log, shown when a test fails). dockerd_stop,
# run by the trap even when the test fails, removes every container, stops dockerd (SIGTERM,
# then SIGKILL for it and its children), kills whatever still names $DOCKERD_DIR (shims),
# unmounts what is left under it and removes it.

if [[ -n ${_OFFLOAD_DOCKER_LIB:-} ]]; then
	return 0
fi
_OFFLOAD_DOCKER_LIB=1

DOCKERD_DIR=""
DOCKERD_SOCK=""
DOCKERD_PID=""

# docker_direct ARGS...: the docker CLI against the private dockerd itself (no proxy), with a
# time limit so that a hang fails the test instead of stalling it.
docker_direct() {
	DOCKER_HOST=unix://$DOCKERD_SOCK timeout 120 docker "$@"
}

# dockerd_start: start a private dockerd and wait (30 s at most) until it answers.
dockerd_start() {
	local d deadline
	[[ -n $T ]] || fail "dockerd_start: call t_setup first"
	command -v dockerd >/dev/null || fail "dockerd_start: dockerd is not installed (docker.io)"
	command -v docker >/dev/null || fail "dockerd_start: the docker CLI is not installed"
	DOCKERD_DIR=$T/docker
	DOCKERD_SOCK=$DOCKERD_DIR/docker.sock
	d=$DOCKERD_DIR
	mkdir -p "$d"
	trap 'dockerd_stop; t_cleanup' EXIT
	trap 'dockerd_stop; t_cleanup; trap - EXIT; exit 130' INT
	trap 'dockerd_stop; t_cleanup; trap - EXIT; exit 143' TERM
	dockerd --host "unix://$d/docker.sock" --data-root "$d/data" --exec-root "$d/exec" \
		--pidfile "$d/pid" --iptables=false --bridge=none >"$d/dockerd.log" 2>&1 &
	DOCKERD_PID=$!
	export DOCKERD_DIR DOCKERD_SOCK DOCKERD_PID
	deadline=$((SECONDS + 30))
	until [[ -S $DOCKERD_SOCK ]] && docker_direct version >/dev/null 2>&1; do
		kill -0 "$DOCKERD_PID" 2>/dev/null || fail "dockerd died at start: $(tail -n 5 "$d/dockerd.log")"
		((SECONDS < deadline)) || fail "dockerd not answering after 30 s: $(tail -n 5 "$d/dockerd.log")"
		sleep 0.1
	done
	t_log "dockerd pid $DOCKERD_PID on $DOCKERD_SOCK"
}

# docker_import_busybox: the image offload-test:busybox, made offline from /bin/busybox.
docker_import_busybox() {
	local r=$DOCKERD_DIR/rootfs c
	[[ -x /bin/busybox ]] || fail "docker_import_busybox: /bin/busybox missing (busybox-static)"
	mkdir -p "$r/bin" "$r/tmp"
	cp /bin/busybox "$r/bin/"
	for c in sh cat ls find inotifyd sleep echo true false touch mkdir rm head wc; do
		ln -s busybox "$r/bin/$c"
	done
	tar -C "$r" -c . | docker_direct import - offload-test:busybox >/dev/null ||
		fail "docker_import_busybox: docker import failed"
	rm -rf "$r"
}

# dockerd_stop: remove every container, stop dockerd and clean its folder (see above). Keeps the
# exit status it was called with, so that t_cleanup after it still sees the test's.
dockerd_stop() {
	local rc=$? ids deadline mp
	[[ -n $DOCKERD_PID ]] || return "$rc"
	set +e
	if ((rc != 0)) && [[ -s $DOCKERD_DIR/dockerd.log ]]; then
		echo "--- last lines of $DOCKERD_DIR/dockerd.log" >&2
		tail -n 15 "$DOCKERD_DIR/dockerd.log" >&2
		echo "---" >&2
	fi
	if kill -0 "$DOCKERD_PID" 2>/dev/null; then
		ids=$(DOCKER_HOST=unix://$DOCKERD_SOCK timeout 20 docker ps -aq 2>/dev/null)
		if [[ -n $ids ]]; then
			# shellcheck disable=SC2086
			DOCKER_HOST=unix://$DOCKERD_SOCK timeout 60 docker rm -f -v $ids >/dev/null 2>&1
		fi
		kill -TERM "$DOCKERD_PID" 2>/dev/null
		deadline=$((SECONDS + 20))
		while kill -0 "$DOCKERD_PID" 2>/dev/null && ((SECONDS < deadline)); do
			sleep 0.1
		done
		if kill -0 "$DOCKERD_PID" 2>/dev/null; then
			echo "cleanup: dockerd ignored SIGTERM for 20 s; killing it" >&2
			_t_kill_tree KILL "$DOCKERD_PID"
		fi
	fi
	wait "$DOCKERD_PID" 2>/dev/null
	# shellcheck disable=SC2046
	_t_kill_tree KILL $(_t_pids_using "$DOCKERD_DIR")
	while read -r mp; do
		[[ -n $mp ]] || continue
		umount -l "$mp" 2>/dev/null || echo "cleanup: cannot unmount '$mp'" >&2
	done < <(_t_mounts_under "$DOCKERD_DIR")
	if [[ ${T_KEEP:-} == 1 ]]; then # keep the log for the post-mortem
		rm -rf --one-file-system "$DOCKERD_DIR/data" "$DOCKERD_DIR/exec"
	else
		rm -rf --one-file-system "$DOCKERD_DIR" 2>/dev/null || rm -rf "$DOCKERD_DIR"
	fi
	DOCKERD_PID=""
	return "$rc"
}
