# Shell helpers shared by the bench/ scripts (sourced, not run).

# Waits up to 15 s for a "PREFIX HOST:PORT..." line in FILE, written by the
# process PID; prints PORT. Fails if the process exits first.
wait_port() {
  local file=$1 prefix=$2 pid=$3 i line
  for ((i = 0; i < 150; i++)); do
    line=$(grep -m1 "^$prefix " "$file" 2>/dev/null || true)
    if [[ $line =~ ^$prefix\ [^\ ]*:([0-9]+) ]]; then
      echo "${BASH_REMATCH[1]}"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Stops every pid in the PIDS array and removes WORK (an EXIT trap).
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
