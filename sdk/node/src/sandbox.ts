import { createReadStream, createWriteStream, statSync, renameSync, rmSync } from "node:fs";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

import { KrunboxError } from "./errors.js";
import { Execution, startMessage, type ExecOptions, type ExecOutput } from "./exec.js";
import { Transport, collect, type ConnectOptions } from "./transport.js";

/** The guest's network (`krunbox create`'s options). */
export interface NetworkOptions {
  /** `user` (default: the gateway with egress policy), `none` or `tsi`. */
  mode?: "user" | "none" | "tsi";
  /** `--allow-host NAME[:PORT]`: with any, everything else is denied. */
  allowHosts?: string[];
  /** `--allow-net CIDR[:PORT]`. */
  allowNets?: string[];
  /** `-p [HOST_IP:]HOST_PORT:GUEST_PORT`. */
  publish?: string[];
  /** `--add-host NAME:IP`. */
  addHosts?: string[];
}

/** What a sandbox is made of: `krunbox create`'s options. */
export interface SandboxOptions {
  /** Registry reference, OCI layout or archive, or root filesystem directory (default: the built-in image). */
  image?: string;
  name?: string;
  profile?: string;
  cpus?: number;
  memoryMib?: number;
  /** A host directory shared read-write at the same path; commands start there as its owner. */
  workspace?: string;
  /**
   * `"review"`: the guest gets a copy of the workspace (without `.env*`, keys, `.ssh/`);
   * nothing reaches the directory until `sandbox.accept()` (see `sandbox.changes()`).
   */
  workspaceMode?: "share" | "review";
  /** `HOST:GUEST[:ro]` (HOST may be a volume name). */
  volumes?: string[];
  network?: NetworkOptions;
  env?: Record<string, string>;
  workdir?: string;
  user?: string;
  hostname?: string;
  backend?: "auto" | "krun" | "qemu";
  ssh?: boolean;
  hostCa?: boolean;
  /**
   * Secrets that never enter the VM: the guest sees `name` set to a placeholder, and the
   * gateway puts the value in the header values of HTTPS requests to `hosts` only. The value
   * comes from the environment of `krunbox serve` (a private server inherits this process's).
   */
  secrets?: { name: string; hosts: string[] }[];
  bootTimeoutSecs?: number;
  /** Boot it now (default true). */
  start?: boolean;
}

/** A sandbox as the API describes it (`krunbox inspect`). */
export interface SandboxInfo {
  name: string;
  dir: string;
  status: { status: "created" | "starting" | "running" | "paused" | "exited"; reason?: string };
  spec: Record<string, unknown>;
  state: Record<string, unknown> | null;
}

/** A change the guest made to its copy of a `workspaceMode: "review"` workspace. */
export interface Change {
  path: string;
  change: "added" | "deleted" | "modified" | "mode" | "type";
  kind?: "file" | "dir" | "symlink" | null;
  /** The host's file changed since the copy: accepting it is refused. */
  conflict: boolean;
  /** With `changes({ patch: true })`: a unified diff. */
  patch?: string;
}

/** One event of an image pull. */
export interface PullEvent {
  event: "download" | "progress" | "done" | "present" | "pulled" | "error";
  digest?: string;
  size?: number;
  received?: number;
  name?: string;
  id?: string;
  kind?: string;
  message?: string;
}

function createBody(options: SandboxOptions): Record<string, unknown> {
  const body: Record<string, unknown> = {
    name: options.name,
    image: options.image,
    profile: options.profile,
    cpus: options.cpus,
    memory_mib: options.memoryMib,
    workspace: options.workspace,
    workspace_mode: options.workspaceMode,
    volumes: options.volumes,
    env: options.env,
    workdir: options.workdir,
    user: options.user,
    hostname: options.hostname,
    backend: options.backend,
    ssh: options.ssh,
    host_ca: options.hostCa,
    secrets: options.secrets,
    boot_timeout_secs: options.bootTimeoutSecs,
    start: options.start,
  };
  if (options.network) {
    const n = options.network;
    body.network = {
      mode: n.mode,
      allow_hosts: n.allowHosts,
      allow_nets: n.allowNets,
      publish: n.publish,
      add_hosts: n.addHosts,
    };
  }
  return JSON.parse(JSON.stringify(body));
}

const sandboxPath = (name: string, action = "") =>
  `/v1/sandboxes/${encodeURIComponent(name)}${action ? `/${action}` : ""}`;
const query = (params: Record<string, string | number | boolean>) =>
  "?" + new URLSearchParams(Object.entries(params).map(([k, v]) => [k, String(v)])).toString();

/** A connection to `krunbox serve`. */
export class Krunbox {
  private constructor(readonly transport: Transport) {}

  /** Connects (see `ConnectOptions`; with none, a private server is started). */
  static async connect(options: ConnectOptions = {}): Promise<Krunbox> {
    return new Krunbox(await Transport.open(options));
  }

  /** Ends the private server, if one was started. */
  close(): Promise<void> {
    return this.transport.close();
  }

  version(): Promise<{ version: string; api: string; protocol_generation: number }> {
    return this.transport.json("GET", "/v1/version");
  }

  /** Creates (and unless `start: false`, boots) a sandbox. */
  async create(options: SandboxOptions = {}): Promise<Sandbox> {
    const info = await this.transport.json<SandboxInfo>("POST", "/v1/sandboxes", createBody(options));
    return new Sandbox(this, info.name);
  }

  /** An existing sandbox (checked). */
  async sandbox(name: string): Promise<Sandbox> {
    const info = await this.transport.json<SandboxInfo>("GET", sandboxPath(name));
    return new Sandbox(this, info.name);
  }

  list(): Promise<SandboxInfo[]> {
    return this.transport.json("GET", "/v1/sandboxes");
  }

  images(): Promise<Array<Record<string, unknown>>> {
    return this.transport.json("GET", "/v1/images");
  }

  /** Pulls an image; `onEvent` sees each progress event. Resolves with the `pulled` event. */
  async pull(reference: string, onEvent?: (event: PullEvent) => void): Promise<PullEvent> {
    const res = await this.transport.stream("POST", "/v1/images/pull", JSON.stringify({ reference }), "application/json");
    let last: PullEvent | undefined;
    let pending = "";
    for await (const chunk of res) {
      pending += (chunk as Buffer).toString("utf8");
      let at: number;
      while ((at = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, at).trim();
        pending = pending.slice(at + 1);
        if (!line) continue;
        last = JSON.parse(line) as PullEvent;
        onEvent?.(last);
      }
    }
    if (last?.event !== "pulled") throw new KrunboxError(last?.message ?? "the pull ended early", last?.kind ?? "internal");
    return last;
  }

  removeImage(reference: string): Promise<{ name: string; freed_bytes: number }> {
    return this.transport.json("DELETE", "/v1/images" + query({ reference }));
  }
}

/** A sandbox: a micro-VM with its own kernel. */
export class Sandbox {
  constructor(readonly client: Krunbox, readonly name: string) {}

  /** Creates a sandbox with a client of its own (closed by `remove()`), or with `client`. */
  static async create(options: SandboxOptions = {}, client?: Krunbox): Promise<Sandbox> {
    const owner = client ?? (await Krunbox.connect());
    try {
      const sandbox = await owner.create(options);
      if (!client) sandbox.ownsClient = true;
      return sandbox;
    } catch (err) {
      if (!client) await owner.close();
      throw err;
    }
  }

  private ownsClient = false;

  private get transport(): Transport {
    return this.client.transport;
  }

  info(): Promise<SandboxInfo> {
    return this.transport.json("GET", sandboxPath(this.name));
  }

  start(): Promise<SandboxInfo> {
    return this.transport.json("POST", sandboxPath(this.name, "start"));
  }

  stop(graceSecs = 10): Promise<SandboxInfo> {
    return this.transport.json("POST", sandboxPath(this.name, "stop") + query({ grace_secs: graceSecs }));
  }

  pause(): Promise<SandboxInfo> {
    return this.transport.json("POST", sandboxPath(this.name, "pause"));
  }

  resume(): Promise<SandboxInfo> {
    return this.transport.json("POST", sandboxPath(this.name, "resume"));
  }

  /** Removes the sandbox (stopping it first). */
  async remove(): Promise<void> {
    await this.transport.json("DELETE", sandboxPath(this.name) + query({ force: true }));
    if (this.ownsClient) await this.client.close();
  }

  stats(intervalMs = 500): Promise<Record<string, unknown>> {
    return this.transport.json("GET", sandboxPath(this.name, "stats") + query({ interval_ms: intervalMs }));
  }

  /** What the guest changed in its copy of a review workspace (`krunbox diff`). */
  changes(options: { patch?: boolean } = {}): Promise<Change[]> {
    return this.transport.json("GET", sandboxPath(this.name, "changes") + query({ patch: options.patch ?? false }));
  }

  /** Writes changes (all, or those under `paths`) into the workspace (`krunbox accept`). */
  async accept(paths: string[] = []): Promise<Change[]> {
    const done = await this.transport.json<{ accepted: Change[] }>("POST", sandboxPath(this.name, "accept"), { paths });
    return done.accepted;
  }

  /** Puts the copy back as the workspace has it (all, or under `paths`) (`krunbox reject`). */
  async reject(paths: string[] = []): Promise<Change[]> {
    const done = await this.transport.json<{ rejected: Change[] }>("POST", sandboxPath(this.name, "reject"), { paths });
    return done.rejected;
  }

  async logs(kind: "console" | "monitor" | "network" = "console"): Promise<string> {
    const res = await this.transport.stream("GET", sandboxPath(this.name, "logs") + query({ kind }));
    return (await collect(res)).toString("utf8");
  }

  /** Starts a command; its streams and `exit` are on the returned `Execution`. */
  exec(cmd: string | string[], options: ExecOptions = {}): Execution {
    const socket = this.transport.websocket(sandboxPath(this.name, "exec"));
    const execution = new Execution(socket, startMessage(cmd, options));
    const input = options.stdin;
    if (typeof input === "string" || Buffer.isBuffer(input)) execution.stdin.end(input);
    return execution;
  }

  /** Runs a command to its end and returns its output. */
  run(cmd: string | string[], options: ExecOptions = {}): Promise<ExecOutput> {
    return this.exec(cmd, options).output();
  }

  /** Writes a file (parents are created; it appears only once complete). */
  async writeFile(path: string, data: Buffer | string | Readable, mode = 0o644): Promise<number> {
    const res = await this.transport.stream(
      "PUT",
      sandboxPath(this.name, "files") + query({ path, mode: mode.toString(8) }),
      data,
      "application/octet-stream",
    );
    return JSON.parse((await collect(res)).toString("utf8")).bytes;
  }

  async readFile(path: string): Promise<Buffer> {
    return collect(await this.readStream(path));
  }

  /** A file of the sandbox as a stream. */
  readStream(path: string): Promise<Readable> {
    return this.transport.stream("GET", sandboxPath(this.name, "files") + query({ path }));
  }

  /** Streams a local file into the sandbox (its mode kept unless given). */
  upload(localPath: string, remotePath: string, mode?: number): Promise<number> {
    const bits = mode ?? statSync(localPath).mode & 0o777;
    return this.writeFile(remotePath, createReadStream(localPath), bits);
  }

  /** Streams a file of the sandbox to a local file (written whole or not at all). */
  async download(remotePath: string, localPath: string): Promise<number> {
    const res = await this.readStream(remotePath);
    const expected = Number((res as unknown as { headers: Record<string, string> }).headers["content-length"] ?? -1);
    const temp = `${localPath}.part`;
    let total = 0;
    res.on("data", (chunk: Buffer) => (total += chunk.length));
    try {
      await pipeline(res, createWriteStream(temp));
      if (expected >= 0 && total !== expected) throw new KrunboxError(`${remotePath}: got ${total} of ${expected} bytes`);
      renameSync(temp, localPath);
    } catch (err) {
      rmSync(temp, { force: true });
      throw err;
    }
    return total;
  }
}
