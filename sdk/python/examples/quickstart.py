import krunbox

# A micro-VM with its own kernel; a private `krunbox serve` is started for it.
with krunbox.Krunbox() as kb:
    sandbox = kb.create(memory_mib=512)
    try:
        sandbox.write_file("/tmp/hello.sh", "echo hello from $(uname -s), $1\n", mode=0o755)
        result = sandbox.exec(["sh", "/tmp/hello.sh", "Python"])
        print(result.stdout.decode(), end="")
        print(f"exit code {result.exit_code}")
    finally:
        sandbox.remove()
