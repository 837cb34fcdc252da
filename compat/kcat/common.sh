# Shared by the kcat scenarios: argument parsing, failing with a message,
# and the bound on every kcat call (a hang becomes a failure, not a stuck
# run). Sourced, not run.

# How long one kcat call may take: a bound on hangs, not a speed assertion.
kcat_timeout_s=30

bootstrap=""
topic_prefix="compat-$(date +%s)-$$"
while [[ $# -gt 0 ]]; do
    case $1 in
    --bootstrap) bootstrap=$2; shift 2 ;;
    --topic-prefix) topic_prefix=$2; shift 2 ;;
    *) echo "usage: $0 --bootstrap HOST:PORT [--topic-prefix P]" >&2; exit 2 ;;
    esac
done
if [[ -z $bootstrap ]]; then
    echo "usage: $0 --bootstrap HOST:PORT [--topic-prefix P]" >&2
    exit 2
fi
if ! command -v kcat >/dev/null; then
    echo "FAIL: kcat is not installed: run compat/install.sh" >&2
    exit 1
fi

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# kcat with the bootstrap address and the bound; its stderr goes to ours.
k() {
    timeout "$kcat_timeout_s" kcat -b "$bootstrap" "$@"
}
