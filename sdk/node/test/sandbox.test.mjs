// The Node.js SDK against real sandboxes (tests/tests/sdk.rs starts `krunbox serve` and sets
// KRUNBOX_SOCKET). ESM here; cjs.test.cjs checks the CommonJS build.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { Krunbox, KrunboxError } from "../dist/esm/index.js";

const socketPath = process.env.KRUNBOX_SOCKET;
let kb;
let sandbox;

before(async () => {
  assert.ok(socketPath, "KRUNBOX_SOCKET must name the server");
  kb = await Krunbox.connect({ socketPath });
  sandbox = await kb.create({ name: `sdknode-${randomBytes(4).toString("hex")}`, memoryMib: 256, env: { GREETING: "hi" } });
});

after(async () => {
  await sandbox?.remove();
  await kb?.close();
});

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

test("exec: exit codes, stdout and stderr apart, env, cwd, user", async () => {
  const out = await sandbox.run(["sh", "-c", "echo $GREETING; echo err >&2; exit 5"]);
  assert.equal(out.exitCode, 5);
  assert.equal(out.stdout.toString(), "hi\n");
  assert.equal(out.stderr.toString(), "err\n");
  assert.equal((await sandbox.run("pwd", { cwd: "/tmp" })).stdout.toString(), "/tmp\n");
  assert.equal((await sandbox.run(["id", "-u"], { user: "1000" })).stdout.toString(), "1000\n");
  assert.ok((await sandbox.run(["id", "-G"], { user: "1000", groupAdd: ["7"] })).stdout.toString().split(/\s+/).includes("7"));
  const limits = await sandbox.run("grep 'open files' /proc/self/limits", { ulimits: ["nofile=321:654"] });
  assert.deepEqual(limits.stdout.toString().trim().split(/\s+/).slice(3, 5), ["321", "654"]);
  await assert.rejects(sandbox.run(["true"], { ulimits: ["nofile=9:1"] }), (err) => err.kind === "bad_request" && /soft limit/.test(err.message));
  const narrowed = await sandbox.run("grep -E '^(CapBnd|NoNewPrivs):' /proc/self/status; hostname x || echo refused", { capDrop: ["ALL"], capAdd: ["chown"], noNewPrivileges: true });
  assert.deepEqual(narrowed.stdout.toString().split(/\s+/).slice(0, 5), ["CapBnd:", "0000000000000001", "NoNewPrivs:", "1", "refused"]);
  await assert.rejects(sandbox.run(["true"], { capDrop: ["NET_RAWR"] }), (err) => err.kind === "bad_request" && /NET_RAWR/.test(err.message));
  const missing = await sandbox.run(["/no/such/program"]);
  assert.equal(missing.exitCode, 127);
  assert.ok(missing.spawnError);
});

test("stdin streams in, and a large output streams out whole", async () => {
  const input = randomBytes(2 * 1024 * 1024);
  const echoed = await sandbox.run(["sh", "-c", "cat | sha256sum"], { stdin: input });
  assert.equal(echoed.stdout.toString().split(" ")[0], sha256(input));

  const script = "head -c 8000000 /dev/urandom > /tmp/big; sha256sum /tmp/big >&2; cat /tmp/big";
  const execution = sandbox.exec(["sh", "-c", script]);
  const hash = createHash("sha256");
  let bytes = 0;
  // A slow reader: the stream applies back-pressure, nothing is lost.
  for await (const chunk of execution.stdout) {
    hash.update(chunk);
    bytes += chunk.length;
    if (bytes < 1_000_000) await new Promise((r) => setTimeout(r, 5));
  }
  let stderr = "";
  for await (const chunk of execution.stderr) stderr += chunk;
  const exit = await execution.exit;
  assert.equal(exit.exitCode, 0);
  assert.equal(bytes, 8_000_000);
  assert.equal(stderr.split(" ")[0], hash.digest("hex"));
});

test("a PTY has its size and follows a resize", async () => {
  // The resize and the input travel apart (a control message, the stdin stream), so the
  // command waits (up to 10 s) for the new size to arrive rather than racing it.
  const script = 'tty; stty size; read line; i=0; while [ "$(stty size)" != "52 140" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; stty size';
  const execution = sandbox.exec(["sh", "-c", script], { tty: true, rows: 29, cols: 91, stdin: true });
  let seen = "";
  let resized = false;
  execution.stdout.on("data", (chunk) => {
    seen += chunk;
    if (!resized && seen.includes("29 91")) {
      resized = true;
      execution.resize(52, 140);
      execution.stdin.write("go\n");
    }
  });
  const exit = await execution.exit;
  assert.equal(exit.exitCode, 0);
  assert.match(seen, /\/dev\/pts\/\d+/);
  assert.match(seen, /52 140/);
});

test("a signal reaches the command", async () => {
  const execution = sandbox.exec(["sleep", "300"]);
  await execution.started;
  execution.kill("INT");
  const exit = await execution.exit;
  assert.equal(exit.signal, 2);
  assert.equal(exit.exitCode, 130);
});

test("files: write, read, upload, download, errors", async () => {
  assert.equal(await sandbox.writeFile("/srv/x/data.bin", Buffer.from([0, 1, 2, 254, 255]), 0o700), 5);
  assert.deepEqual([...(await sandbox.readFile("/srv/x/data.bin"))], [0, 1, 2, 254, 255]);
  assert.equal((await sandbox.run(["stat", "-c", "%a", "/srv/x/data.bin"])).stdout.toString(), "700\n");
  const dir = mkdtempSync(join(tmpdir(), "sdknode-"));
  const local = join(dir, "up.bin");
  const content = randomBytes(4 * 1024 * 1024 + 3);
  writeFileSync(local, content);
  assert.equal(await sandbox.upload(local, "/tmp/up.bin"), content.length);
  const back = join(dir, "down.bin");
  assert.equal(await sandbox.download("/tmp/up.bin", back), content.length);
  assert.equal(sha256(readFileSync(back)), sha256(content));
  await assert.rejects(sandbox.readFile("/no/such/file"), (err) => err instanceof KrunboxError && err.kind === "not_found" && err.status === 404);
  await assert.rejects(sandbox.download("/no/such/file", join(dir, "missing")), KrunboxError);
  assert.ok(!existsSync(join(dir, "missing")) && !existsSync(join(dir, "missing.part")));
});

test("bad options are refused with the reason", async () => {
  await assert.rejects(kb.create({ cpus: 0 }), (err) => err.kind === "bad_request" && /cpus/.test(err.message));
  await assert.rejects(kb.sandbox("no-such-sandbox-here"), (err) => err.kind === "not_found");
});

test("stop, start and status", async () => {
  assert.equal((await sandbox.info()).status.status, "running");
  await sandbox.stop();
  assert.equal((await sandbox.info()).status.status, "exited");
  await sandbox.start();
  assert.equal((await sandbox.run("echo back")).stdout.toString(), "back\n");
});

test("a review workspace: the guest's changes wait for accept, and a conflict is refused", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sdknode-review-"));
  writeFileSync(join(dir, "a.txt"), "host\n");
  writeFileSync(join(dir, ".env"), "TOKEN=host-only\n");
  const box = await kb.create({ name: `sdkreview-${randomBytes(4).toString("hex")}`, memoryMib: 256, workspace: dir, workspaceMode: "review" });
  try {
    const seen = await box.run("cat .env 2>&1; echo guest > a.txt; echo b > b.txt");
    assert.ok(!seen.stdout.toString().includes("host-only"), "the secret stays out of the copy");
    assert.equal(readFileSync(join(dir, "a.txt"), "utf8"), "host\n");
    const changes = await box.changes({ patch: true });
    assert.deepEqual(changes.map((c) => [c.path, c.change, c.conflict]), [["a.txt", "modified", false], ["b.txt", "added", false]]);
    assert.match(changes[0].patch, /\+guest/);
    await assert.rejects(box.accept(["a.txt"]), (err) => err.kind === "conflict" && /pause/.test(err.message));
    await box.pause();
    assert.deepEqual((await box.accept(["a.txt"])).map((c) => c.path), ["a.txt"]);
    assert.equal(readFileSync(join(dir, "a.txt"), "utf8"), "guest\n");
    writeFileSync(join(dir, "b.txt"), "the host made one too\n");
    await assert.rejects(box.accept(["b.txt"]), (err) => err.kind === "conflict" && err.status === 409);
    await box.reject();
    assert.deepEqual(await box.changes(), []);
    await box.resume();
    assert.equal((await box.run("cat a.txt; test -e b.txt; echo $?")).stdout.toString(), "guest\n1\n");
  } finally {
    await box.remove();
  }
});
