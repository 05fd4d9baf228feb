#!/usr/bin/env bash
# Mutation testing of the pure modules with mutmut (docs/mutants.md lists the survivors).
#
#   bash integration/mutation.sh                 # every module below
#   bash integration/mutation.sh decisions cli   # only these modules
#
# Needs mutmut in the worktree's venv:  .venv/bin/pip install mutmut==3.8.1
# Env: JOBS (default 2) parallel mutants; MUTATION_DIR (default .mutation) the scratch copy;
# ALIVE=1 reruns only the mutants the last run of these modules left alive.
#
# Why a scratch copy: setup.cfg makes milter/ the source root of the package
# (milter/crowdsec_milter/), but mutmut names each mutant after the file's path
# (milter/crowdsec_milter/x.py -> "milter.crowdsec_milter.x") and only
# activates it in code whose __module__ matches. So the sources are copied to
# src/crowdsec_milter/ (mutmut strips "src."), where the names agree, and mutmut's
# mutants/src goes first on sys.path, ahead of the editable install's finder.
# Only the fast unit tests of these modules run, never integration/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
WORK=${MUTATION_DIR:-$ROOT/.mutation}
JOBS=${JOBS:-2}
ALL=(decisions policy jsonstream events cli index address)
MODULES=("${@:-${ALL[@]}}")

if ! "$VENV/bin/python" -c 'import mutmut' 2>/dev/null; then
    echo "mutation.sh: mutmut is not installed; run: $VENV/bin/pip install mutmut==3.8.1" >&2
    exit 2
fi

# Which mutants to run per module: all functions, except in cli.py, where only the value
# parsing and checks are in scope (not the parser's table or main()).
patterns_for() {
    case "$1" in
        cli) printf '%s\n' \
            'crowdsec_milter.cli.x__positive__mutmut_*' \
            'crowdsec_milter.cli.x_read_api_key__mutmut_*' \
            'crowdsec_milter.cli.x_check_socket__mutmut_*' \
            'crowdsec_milter.cli.x_check_url__mutmut_*' \
            'crowdsec_milter.cli.x_parse_actions__mutmut_*' \
            'crowdsec_milter.cli.x_check_listen__mutmut_*' \
            'crowdsec_milter.cli.x_check_tls__mutmut_*' \
            'crowdsec_milter.cli.x_settings_from_args__mutmut_*' ;;
        events) printf '%s\n' \
            'crowdsec_milter.events.x_clean_text__mutmut_*' \
            'crowdsec_milter.events.x_rfc3339__mutmut_*' \
            'crowdsec_milter.events.x__typed__mutmut_*' \
            'crowdsec_milter.events.x_format_event__mutmut_*' ;;
        *) printf '%s\n' "crowdsec_milter.$1.*" ;;
    esac
}

# A fresh copy of sources and tests each run; mutmut's own cache (mutants/) is kept, and
# it re-mutates a file whose copy changed.
# cp -p keeps mtimes, by which mutmut tells a changed file from its cached mutants.
rm -rf "$WORK/src/crowdsec_milter" "$WORK/tests" "$WORK/conf"
mkdir -p "$WORK/src/crowdsec_milter" "$WORK/tests" "$WORK/conf"
cp -p "$ROOT"/milter/crowdsec_milter/*.py "$WORK/src/crowdsec_milter/"
cp -p "$ROOT"/tests/*.py "$WORK/tests/"
# the event tests check lines against conf/events.schema.json, and the README against it
cp -rp "$ROOT"/conf/. "$WORK/conf/"
cp -p "$ROOT"/README.md "$WORK/"

for m in "${MODULES[@]}"; do
    [[ " ${ALL[*]} " == *" $m "* ]] || { echo "mutation.sh: not one of: ${ALL[*]}" >&2; exit 2; }
done
# The config names all modules and their tests whatever the arguments: mutmut caches its
# mutants and results per file, and a file it once copied unmutated it never mutates later.
only=""
tests=""
for m in "${ALL[@]}"; do
    only+="    src/crowdsec_milter/$m.py"$'\n'
    extra=()
    [[ $m == events ]] && extra=("$ROOT/tests/test_event_schema.py")
    for t in "$ROOT/tests/test_$m.py" "$ROOT"/tests/test_"$m"_*.py "${extra[@]}"; do
        [[ -f "$t" ]] && tests+="    tests/$(basename "$t")"$'\n'
    done
done

# Hypothesis under mutmut: calls go through mutmut's trampolines (slower, so no deadline or
# too-slow health check) and examples are derandomized, so a rerun gives the same score.
# No shrinking: a mutant is killed by the first failing example, and shrinking one through
# the index's model test took minutes.
cat > "$WORK/conftest.py" <<'EOF'
from hypothesis import HealthCheck, Phase, settings

settings.register_profile("mutation", deadline=None, derandomize=True, database=None,
                          phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=list(HealthCheck))
settings.load_profile("mutation")
EOF

cat > "$WORK/setup.cfg.new" <<EOF
[tool:pytest]
addopts = -p no:cacheprovider --import-mode=importlib
markers =
    integration: needs real Postfix and CrowdSec

[mutmut]
source_paths = src/crowdsec_milter
also_copy =
    conftest.py
    conf
    README.md
only_mutate =
$only
pytest_add_cli_args_test_selection =
$tests
EOF

# A changed config (new test file, edited script) starts mutmut's cache afresh.
if ! cmp -s "$WORK/setup.cfg.new" "$WORK/setup.cfg"; then
    rm -rf "$WORK/mutants"
fi
mv "$WORK/setup.cfg.new" "$WORK/setup.cfg"

patterns=()
for m in "${MODULES[@]}"; do
    while read -r p; do patterns+=("$p"); done < <(patterns_for "$m")
done
# ALIVE=1: rerun only the mutants the last run left alive (after adding tests for them);
# mutmut reruns every mutant a pattern names, so the full patterns above redo them all.
alive_of() {
    "$VENV/bin/python" - "$@" <<'PY'
import fnmatch, json, sys
from mutmut.stats import status_by_exit_code
codes = json.loads(open(sys.argv[1]).read())["exit_code_by_key"]
for name, code in sorted(codes.items()):
    if any(fnmatch.fnmatch(name, p) for p in sys.argv[2:]) and \
            status_by_exit_code[code] not in ("killed", "timeout", "segfault"):
        print(name)
PY
}
if [[ ${ALIVE:-0} == 1 ]]; then
    alive=()
    for m in "${MODULES[@]}"; do
        meta="$WORK/mutants/src/crowdsec_milter/$m.py.meta"
        [[ -f $meta ]] || { echo "mutation.sh: ALIVE=1 needs an earlier run of $m" >&2; exit 2; }
        while read -r p; do alive+=("$p"); done < <(alive_of "$meta" "${patterns[@]}")
    done
    [[ ${#alive[@]} -gt 0 ]] || { echo "mutation.sh: no mutant left alive" >&2; exit 0; }
    patterns=("${alive[@]}")
fi

cd "$WORK"
# mutmut 3 writes its progress with carriage returns; keep only the last state per line.
"$VENV/bin/mutmut" run --max-children "$JOBS" "${patterns[@]}" > mutmut.log 2>&1 || {
    tr '\r' '\n' < mutmut.log | tail -n 40; echo "mutation.sh: mutmut failed ($WORK/mutmut.log)" >&2; exit 1; }
tr '\r' '\n' < mutmut.log | grep -a -v '^ *$' | tail -n 3
echo
echo "== score per module (killed / all; timeouts count as killed) =="
"$VENV/bin/python" - "${MODULES[@]}" <<'EOF'
import json, sys
from pathlib import Path

from mutmut.stats import status_by_exit_code


def wanted(module: str, name: str) -> bool:
    scope = {
        "cli": ("_positive", "read_api_key", "check_socket", "check_url", "parse_actions",
                "check_listen", "check_tls", "settings_from_args"),
        "events": ("clean_text", "rfc3339", "_typed", "format_event"),
    }.get(module)
    if scope is None:
        return True
    func = name.rsplit(".", 1)[1][2:].rsplit("__mutmut_", 1)[0]
    return func in scope

survived_all = []
for module in sys.argv[1:]:
    meta = Path(f"mutants/src/crowdsec_milter/{module}.py.meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    codes = {k: v for k, v in codes.items() if wanted(module, k)}
    # Killed: a test failed, or the mutant hung (timeout) or crashed. Survived, "no tests"
    # (no selected test calls it) and not-yet-run all count against the score.
    alive = sorted(k for k, v in codes.items()
                   if status_by_exit_code[v] not in ("killed", "timeout", "segfault"))
    killed = len(codes) - len(alive)
    pct = 100.0 * killed / len(codes) if codes else 100.0
    print(f"{module:12s} {killed:4d} / {len(codes):4d}  {pct:5.1f}%")
    survived_all += alive
print()
print(f"{len(survived_all)} not killed (see: cd {Path.cwd()} && mutmut show NAME):")
for name in survived_all:
    print("  ", name)
EOF
