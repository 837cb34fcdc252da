#!/usr/bin/env bash
# Installs what the compatibility scenarios need, and only what is missing:
#   - kcat (Debian package), when `kcat` is not on PATH;
#   - PostgreSQL (Debian package), when no /usr/lib/postgresql/*/bin/initdb
#     exists, for Spate Connect's PostgreSQL connector tests;
#   - a Python virtualenv at target/compat/venv with the pinned clients;
#   - the Java scenarios (kafka-clients), built with Maven into target/compat/java;
#   - the franz-go scenario, built into target/compat/bin/franzgo;
#   - Apache Kafka's broker jars (kafka_2.13 and its runtime dependencies)
#     into target/compat/kafka-libs, for compat/kafka/start.sh;
#   - the frameworks users attach: Kafka's tools into
#     target/compat/frameworks-libs, a Connect worker with the file
#     connectors into target/compat/connect-libs.
# Non-interactive (CI=true, no stdin, root) and idempotent: each step keeps a
# stamp of its inputs under target/compat/stamps and is skipped while its
# output exists and its inputs are unchanged. Any step that fails stops the
# script with a message and a non-zero exit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
compat=$repo/compat
out=$repo/target/compat
stamps=$out/stamps
mkdir -p "$stamps" "$out/bin"

# Pinned client versions. confluent-kafka's wheel carries its own current
# librdkafka; both support Python 3.8 and later, 3.11 included.
confluent_kafka_version=2.16.1
kafka_python_version=3.0.12

started_s=$SECONDS
say() { echo "install: $*"; }
die() {
    echo "install: error: $*" >&2
    exit 1
}
step_timer() { echo "install:   ($(($SECONDS - $1))s)"; }

# Whether a step's stamp matches its inputs' hash (so it can be skipped).
stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1; }
stamp_ok() { [[ -f $stamps/$1 && $(cat "$stamps/$1") == "$2" ]]; }
stamp_set() { echo "$2" >"$stamps/$1"; }

apt_updated=false
apt_install() {
    # apt-get update only when a package has no install candidate yet
    # (a fresh machine's lists may be empty or old), and at most once.
    local package=$1
    local policy
    policy=$(apt-cache policy "$package" 2>/dev/null || true)
    if ! $apt_updated && [[ $policy != *"Candidate: "[0-9]* ]]; then
        say "apt-get update (no candidate for $package yet)"
        apt-get update -q >/dev/null || die "apt-get update failed"
        apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$package" >/dev/null ||
        die "apt-get install $package failed"
}

# --- toolchains the machine is expected to have ---------------------------
for tool in java mvn go python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed; this machine kind ships Java 17 + Maven, Go and Python 3.11"
done
java_major=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ { print $2 }')
[[ ${java_major%%.*} -ge 17 ]] || die "Java $java_major found; Apache Kafka 4.x's broker needs Java 17 or later"

# --- kcat -----------------------------------------------------------------
if command -v kcat >/dev/null; then
    say "kcat: present ($(kcat -V 2>&1 | grep -o 'Version [^ ]*' | head -1))"
else
    t=$SECONDS
    say "kcat: installing the Debian package"
    apt_install kcat
    command -v kcat >/dev/null || die "kcat is still missing after apt-get install"
    step_timer $t
fi

# --- PostgreSQL -------------------------------------------------------------
# Spate Connect's PostgreSQL connector tests (cli/tests/connect_postgres_e2e.rs)
# start a real server from Debian's package (initdb, pg_ctl).
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    say "postgresql: present ($(compgen -G "/usr/lib/postgresql/*/bin/initdb" | head -1))"
else
    t=$SECONDS
    say "postgresql: installing the Debian package"
    apt_install postgresql
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || die "postgresql's initdb is still missing after apt-get install"
    step_timer $t
fi

# --- Python clients -------------------------------------------------------
venv=$out/venv
want="confluent-kafka==$confluent_kafka_version kafka-python==$kafka_python_version"
if [[ -x $venv/bin/python ]] && stamp_ok venv "$want"; then
    say "python clients: present ($want)"
else
    t=$SECONDS
    say "python clients: creating $venv with $want"
    python3 -m venv "$venv" || die "python3 -m venv failed"
    # shellcheck disable=SC2086 # $want is two requirement words on purpose
    "$venv/bin/pip" install -q --disable-pip-version-check $want || die "pip install $want failed"
    "$venv/bin/python" -c 'import confluent_kafka, kafka' || die "the installed clients do not import"
    stamp_set venv "$want"
    step_timer $t
fi

# --- Apache Kafka's broker jars -------------------------------------------
libs=$out/kafka-libs
hash=$(stamp_of "$compat/kafka/pom.xml")
if compgen -G "$libs/kafka_2.13-*.jar" >/dev/null && stamp_ok kafka-libs "$hash"; then
    say "kafka broker jars: present ($(basename "$(compgen -G "$libs/kafka_2.13-*.jar")"))"
else
    t=$SECONDS
    say "kafka broker jars: fetching kafka_2.13 and its runtime dependencies with Maven into $libs"
    rm -rf "$libs"
    mvn -B -q -Dstyle.color=never -f "$compat/kafka/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$libs" || die "fetching the Kafka broker jars failed"
    compgen -G "$libs/kafka_2.13-*.jar" >/dev/null || die "no kafka_2.13 jar in $libs after Maven ran"
    stamp_set kafka-libs "$hash"
    say "  $(ls "$libs" | wc -l) jars"
    step_timer $t
fi

# --- Kafka's tools and Kafka Connect --------------------------------------
# fetch_jars NAME POM DIR JAR: the runtime dependencies of POM into DIR,
# unless DIR holds JAR-<version>.jar and POM is unchanged.
fetch_jars() {
    local name=$1 pom=$2 libs=$3 jar=$4
    local hash
    hash=$(stamp_of "$pom")
    if compgen -G "$libs/$jar-[0-9]*.jar" >/dev/null && stamp_ok "$name" "$hash"; then
        say "$name: present ($(basename "$(compgen -G "$libs/$jar-[0-9]*.jar")"))"
        return
    fi
    local t=$SECONDS
    say "$name: fetching $jar and its runtime dependencies with Maven into $libs"
    rm -rf "$libs"
    mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$libs" || die "fetching $name failed"
    compgen -G "$libs/$jar-[0-9]*.jar" >/dev/null || die "no $jar jar in $libs after Maven ran"
    stamp_set "$name" "$hash"
    say "  $(ls "$libs" | wc -l) jars"
    step_timer $t
}
fetch_jars kafka-tools "$compat/frameworks/pom.xml" "$out/frameworks-libs" kafka-tools
fetch_jars kafka-connect "$compat/frameworks/connect/pom.xml" "$out/connect-libs" connect-file

# --- Java scenarios -------------------------------------------------------
hash=$(stamp_of "$compat/java/pom.xml" $(find "$compat/java/src" -type f | sort))
if [[ -f $out/java/build/compat-java.jar ]] && stamp_ok java "$hash"; then
    say "java scenarios: up to date"
else
    t=$SECONDS
    say "java scenarios: building with Maven (kafka-clients $(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$compat/java/pom.xml"))"
    rm -rf "$out/java"
    mvn -B -q -Dstyle.color=never -f "$compat/java/pom.xml" package || die "building the Java scenarios failed"
    [[ -f $out/java/build/compat-java.jar ]] || die "Maven left no $out/java/build/compat-java.jar"
    stamp_set java "$hash"
    step_timer $t
fi

# --- franz-go scenario ----------------------------------------------------
hash=$(stamp_of "$compat/go/go.mod" "$compat/go/go.sum" $(find "$compat/go" -name '*.go' | sort))
if [[ -x $out/bin/franzgo ]] && stamp_ok franzgo "$hash"; then
    say "franz-go scenario: up to date"
else
    t=$SECONDS
    say "franz-go scenario: building ($(awk '$1 == "github.com/twmb/franz-go" { print $1 " " $2 }' "$compat/go/go.mod"))"
    (cd "$compat/go" && go build -o "$out/bin/franzgo" .) || die "building the franz-go scenario failed"
    stamp_set franzgo "$hash"
    step_timer $t
fi

say "done in $((SECONDS - started_s))s"
