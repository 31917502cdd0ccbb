/**
 * krunbox: micro-VM sandboxes from Node.js, through `krunbox serve`.
 *
 * ```ts
 * import { Sandbox } from "krunbox";
 * const sandbox = await Sandbox.create({ memoryMib: 512 });
 * const { stdout, exitCode } = await sandbox.run(["uname", "-r"]);
 * await sandbox.remove();
 * ```
 */
export { KrunboxError } from "./errors.js";
export { Execution, type ExecOptions, type ExecOutput, type ExitResult } from "./exec.js";
export { Krunbox, Sandbox, type NetworkOptions, type PullEvent, type SandboxInfo, type SandboxOptions } from "./sandbox.js";
export type { ConnectOptions } from "./transport.js";

import type { ExecOptions, ExecOutput } from "./exec.js";
import { Sandbox, type SandboxOptions } from "./sandbox.js";

/** One command in a sandbox of its own, removed afterwards. */
export async function run(
  cmd: string | string[],
  options: SandboxOptions & { exec?: ExecOptions } = {},
): Promise<ExecOutput> {
  const { exec, ...create } = options;
  const sandbox = await Sandbox.create(create);
  try {
    return await sandbox.run(cmd, exec);
  } finally {
    await sandbox.remove();
  }
}
