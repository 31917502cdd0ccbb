# Shared by the test scripts (sourced).

# The path of the e2e test binary NAME (tests/tests/NAME.rs), building it if needed. Running
# it directly skips cargo's freshness check, which is slow inside an emulated KVM host.
test_binary() {
  cargo test -p krunbox-tests --test "$1" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["executable"])'
}
