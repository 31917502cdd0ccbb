// The CommonJS build loads and works: a one-shot run() in a sandbox of its own.
const { test } = require("node:test");
const assert = require("node:assert/strict");
const krunbox = require("../dist/cjs/index.js");

test("require('krunbox') runs a command in a sandbox of its own", async () => {
  assert.equal(typeof krunbox.Sandbox, "function");
  const before = await (await krunbox.Krunbox.connect()).list();
  const out = await krunbox.run(["uname", "-s"], { memoryMib: 256 });
  assert.equal(out.exitCode, 0);
  assert.equal(out.stdout.toString(), "Linux\n");
  // Nothing new is left but the other test file's own sandbox (the files may run at once).
  const client = await krunbox.Krunbox.connect();
  const known = new Set(before.map((s) => s.name));
  const left = (await client.list()).map((s) => s.name).filter((name) => !known.has(name) && !name.startsWith("sdknode-"));
  assert.deepEqual(left, []);
});
