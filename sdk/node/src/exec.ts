import { PassThrough, Writable } from "node:stream";
import type WebSocket from "ws";

import { KrunboxError } from "./errors.js";

/** How a command ended. */
export interface ExitResult {
  /** What a shell would say: the code, 128 + signal, 127 not found, 126 not executable. */
  exitCode: number;
  /** The signal that killed it. */
  signal: number | null;
  /** Killed at its timeout. */
  timedOut: boolean;
  /** Why it never started. */
  spawnError: string | null;
}

/** A finished command with its output. */
export interface ExecOutput extends ExitResult {
  stdout: Buffer;
  stderr: Buffer;
}

/** Options of `Sandbox.exec`. */
export interface ExecOptions {
  /** Variables on top of the sandbox's. */
  env?: Record<string, string>;
  /** Working directory. */
  cwd?: string;
  /** UID, UID:GID, NAME or NAME:GROUP. */
  user?: string;
  /** Run on a pseudo-terminal (output all on stdout). */
  tty?: boolean;
  /** The terminal's size, with `tty`. */
  rows?: number;
  cols?: number;
  /** Bytes to feed stdin (then it is closed); or `true` to write `execution.stdin` yourself. */
  stdin?: Buffer | string | boolean;
  /** Seconds after which the command is killed. */
  timeoutSecs?: number;
  /** Resource limits, `NAME=SOFT[:HARD]` as `krunbox exec --ulimit` takes them. */
  ulimits?: string[];
  /** Supplementary groups of the image (names or GIDs), as `krunbox exec --group-add`. */
  groupAdd?: string[];
  /** Capabilities to take from the command (`NET_RAW`, `ALL`), as `krunbox exec --cap-drop`. */
  capDrop?: string[];
  /** Capabilities to give back after `capDrop`. */
  capAdd?: string[];
  /** Set no_new_privs: no setuid or file-capability program the command runs gains more. */
  noNewPrivileges?: boolean;
}

const STDOUT = 1;
const STDERR = 2;

/**
 * A running command: `stdin` (writable), `stdout` and `stderr` (readable streams that apply
 * back-pressure: the guest command waits while you do not read), and `exit`.
 */
export class Execution {
  readonly stdin: Writable;
  readonly stdout = new PassThrough();
  readonly stderr = new PassThrough();
  /** Resolves with the guest pid once the command runs. */
  readonly started: Promise<number | null>;
  /** Resolves when the command ended (after all its output). */
  readonly exit: Promise<ExitResult>;

  constructor(private readonly socket: WebSocket, start: Record<string, unknown>) {
    this.opened = Promise.resolve();
    let markStarted!: (pid: number | null) => void;
    let markExit!: (result: ExitResult) => void;
    let fail!: (err: Error) => void;
    this.started = new Promise((resolve) => (markStarted = resolve));
    this.exit = new Promise((resolve, reject) => {
      markExit = resolve;
      fail = reject;
    });
    // An unobserved failure must not crash the program; `exit` still rejects for whoever waits.
    this.exit.catch(() => {});
    let ended = false;
    // stdin is written only after the exec request went out.
    let opened!: () => void;
    let notOpened!: (err: Error) => void;
    const open = new Promise<void>((resolve, reject) => {
      opened = resolve;
      notOpened = reject;
    });
    open.catch(() => {});
    socket.on("open", () => {
      socket.send(JSON.stringify(start));
      opened();
    });
    socket.on("message", (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        const target = data[0] === STDERR ? this.stderr : data[0] === STDOUT ? this.stdout : null;
        if (target && !target.write(data.subarray(1))) {
          socket.pause();
          target.once("drain", () => socket.resume());
        }
        return;
      }
      const message = JSON.parse(data.toString("utf8"));
      if (message.type === "started") markStarted(message.pid ?? null);
      else if (message.type === "exit") {
        ended = true;
        this.stdout.end();
        this.stderr.end();
        markStarted(null);
        markExit({
          exitCode: message.exit_code,
          signal: message.signal ?? null,
          timedOut: Boolean(message.timed_out),
          spawnError: message.spawn_error ?? null,
        });
      } else if (message.type === "error") {
        ended = true;
        const err = new KrunboxError(message.message, message.kind);
        this.stdout.destroy(err);
        this.stderr.destroy(err);
        markStarted(null);
        fail(err);
      }
    });
    const broken = (err: KrunboxError) => {
      notOpened(err);
      if (ended) return;
      ended = true;
      // Readers of the streams learn of it too, rather than wait for ever.
      this.stdout.destroy(err);
      this.stderr.destroy(err);
      markStarted(null);
      fail(err);
    };
    socket.on("error", (err: Error) => broken(new KrunboxError(`the exec connection failed: ${err.message}`)));
    socket.on("close", () => broken(new KrunboxError("the exec connection closed before the command ended")));
    this.opened = open;
    this.stdin = new Writable({
      construct: (done) => open.then(() => done(), done),
      write: (chunk: Buffer, _encoding, done) => socket.send(chunk, { binary: true }, done),
      final: (done) => socket.send(JSON.stringify({ type: "stdin_eof" }), done),
    });
    // A failed connection fails `exit`, which is where callers learn of it; a stream nobody
    // reads must not crash the program with the same error.
    this.stdin.on("error", () => {});
    this.stdout.on("error", () => {});
    this.stderr.on("error", () => {});
  }

  private opened: Promise<void>;

  /** A control message, once the exec request went out (a failed connection drops it). */
  private control(message: Record<string, unknown>): void {
    this.opened.then(
      () => this.socket.send(JSON.stringify(message), () => {}),
      () => {},
    );
  }

  /** The terminal's new size (with `tty`). */
  resize(rows: number, cols: number): void {
    this.control({ type: "resize", rows, cols });
  }

  /** Sends a signal, by name (`TERM`, `SIGINT`) or number. */
  kill(signal: string | number = "TERM"): void {
    this.control({ type: "signal", signal });
  }

  /** Leaves the command; the server kills it. */
  close(): void {
    this.socket.close();
  }

  /** Waits for the end, with all of stdout and stderr. */
  async output(): Promise<ExecOutput> {
    const gather = (stream: PassThrough) =>
      new Promise<Buffer>((resolve, reject) => {
        const chunks: Buffer[] = [];
        stream.on("data", (c: Buffer) => chunks.push(c));
        stream.on("end", () => resolve(Buffer.concat(chunks)));
        stream.on("error", reject);
      });
    const [stdout, stderr, result] = await Promise.all([gather(this.stdout), gather(this.stderr), this.exit]);
    return { ...result, stdout, stderr };
  }
}

/** The exec WebSocket's first message. */
export function startMessage(cmd: string | string[], options: ExecOptions): Record<string, unknown> {
  const argv = typeof cmd === "string" ? ["sh", "-c", cmd] : cmd;
  const start: Record<string, unknown> = {
    cmd: argv,
    env: options.env ?? {},
    tty: Boolean(options.tty),
    stdin: options.stdin !== undefined && options.stdin !== false,
  };
  if (options.cwd !== undefined) start.cwd = options.cwd;
  if (options.user !== undefined) start.user = options.user;
  if (options.tty) {
    start.rows = options.rows ?? 24;
    start.cols = options.cols ?? 80;
  }
  if (options.timeoutSecs !== undefined) start.timeout_secs = options.timeoutSecs;
  if (options.ulimits !== undefined) start.ulimits = options.ulimits;
  if (options.groupAdd !== undefined) start.group_add = options.groupAdd;
  if (options.capDrop !== undefined) start.cap_drop = options.capDrop;
  if (options.capAdd !== undefined) start.cap_add = options.capAdd;
  if (options.noNewPrivileges) start.no_new_privileges = true;
  return start;
}
