import { Sandbox } from "krunbox";

// A micro-VM with its own kernel; a private `krunbox serve` is started for it.
const sandbox = await Sandbox.create({ memoryMib: 512 });
try {
  await sandbox.writeFile("/tmp/hello.sh", "echo hello from $(uname -s), $1\n", 0o755);
  const run = sandbox.exec(["sh", "/tmp/hello.sh", "Node"]);
  run.stdout.pipe(process.stdout);
  const { exitCode } = await run.exit;
  console.log(`exit code ${exitCode}`);
} finally {
  await sandbox.remove();
}
