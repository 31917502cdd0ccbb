import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import WebSocket from "ws";

import { KrunboxError } from "./errors.js";

/** Where `krunbox serve` is. */
export interface ConnectOptions {
  /** Its Unix socket (default: `$KRUNBOX_SOCKET`). */
  socketPath?: string;
  /** Its TCP URL, e.g. `http://127.0.0.1:7070` (default: `$KRUNBOX_URL`). */
  url?: string;
  /** The bearer token (default: `$KRUNBOX_API_TOKEN`). */
  token?: string;
  /**
   * With neither a socket nor a URL, this client starts a private `krunbox serve` with this
   * program (default `krunbox` on `PATH`); it ends with the client.
   */
  krunbox?: string;
}

/** A request's body: bytes, a string, or a stream (sent as it is read). */
export type Body = Buffer | string | Readable;

/** HTTP to the server, and WebSockets. */
export class Transport {
  private server?: ChildProcess;
  private serverDir?: string;

  private constructor(
    readonly socketPath: string | undefined,
    readonly url: string | undefined,
    readonly token: string | undefined,
  ) {}

  /** Resolves the options (starting a private server if they name none). */
  static async open(options: ConnectOptions = {}): Promise<Transport> {
    const socketPath = options.url ? options.socketPath : (options.socketPath ?? (process.env.KRUNBOX_SOCKET || undefined));
    const url = socketPath ? undefined : (options.url ?? (process.env.KRUNBOX_URL || undefined));
    const token = options.token ?? (process.env.KRUNBOX_API_TOKEN || undefined);
    if (socketPath || url) return new Transport(socketPath, url, token);
    const dir = mkdtempSync(join(tmpdir(), "krunbox-sdk-"));
    chmodSync(dir, 0o700);
    const path = join(dir, "api.sock");
    const transport = new Transport(path, undefined, token);
    transport.serverDir = dir;
    try {
      transport.server = await startServer(options.krunbox ?? "krunbox", path, join(dir, "serve.log"));
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    return transport;
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return this.token ? { ...extra, authorization: `Bearer ${this.token}` } : extra;
  }

  /** Sends a request; resolves with the response once its head arrived (status < 400). */
  stream(method: string, path: string, body?: Body, contentType?: string): Promise<IncomingMessage> {
    const headers = this.headers(contentType ? { "content-type": contentType } : {});
    const target = this.socketPath
      ? { socketPath: this.socketPath, path, host: "krunbox" }
      : (() => {
          const base = new URL(this.url as string);
          // An IPv6 address is bracketed in a URL (`http://[::1]:7070`), never in a host.
          return { host: base.hostname.replace(/^\[(.*)\]$/, "$1"), port: base.port, path };
        })();
    return new Promise((resolve, reject) => {
      const req = httpRequest({ ...target, method, headers }, (res) => {
        if ((res.statusCode ?? 500) < 400) return resolve(res);
        collect(res).then(
          (bytes) => reject(KrunboxError.fromBody(res.statusCode ?? 500, bytes)),
          reject,
        );
      });
      req.on("error", (err) => reject(new KrunboxError(`cannot reach krunbox serve: ${err.message}`)));
      if (body instanceof Readable) {
        body.on("error", (err) => req.destroy(err));
        body.pipe(req);
      } else {
        req.end(body);
      }
    });
  }

  /** A request whose answer is JSON (or nothing). */
  async json<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.stream(
      method,
      path,
      body === undefined ? undefined : JSON.stringify(body),
      body === undefined ? undefined : "application/json",
    );
    const bytes = await collect(res);
    return (bytes.length ? JSON.parse(bytes.toString("utf8")) : undefined) as T;
  }

  /** A WebSocket to `path`. */
  websocket(path: string): WebSocket {
    const address = this.socketPath
      ? `ws+unix://${this.socketPath}:${path}`
      : this.url!.replace(/^http/, "ws").replace(/\/$/, "") + path;
    return new WebSocket(address, { headers: this.headers(), maxPayload: 0 });
  }

  /** Ends the private server, if this client started one. */
  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    if (server.exitCode === null && server.signalCode === null) {
      const exited = new Promise((resolve) => server.once("exit", resolve));
      server.stdin?.end();
      const timer = setTimeout(() => server.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    if (this.serverDir) rmSync(this.serverDir, { recursive: true, force: true });
  }
}

/** The whole body of a response. */
export function collect(stream: Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("end", () => resolve(Buffer.concat(chunks)));
    stream.on("error", reject);
  });
}

async function startServer(program: string, socketPath: string, logPath: string): Promise<ChildProcess> {
  // Its messages go to a file: a pipe would need reading for as long as it runs.
  const log = openSync(logPath, "w");
  const child = spawn(program, ["serve", "--socket", socketPath, "--stdin-lifeline"], {
    stdio: ["pipe", "ignore", log],
  });
  closeSync(log);
  const logged = () => readFileSync(logPath, "utf8").slice(0, 64 * 1024).trim();
  const failed = new Promise<never>((_, reject) => {
    child.once("error", (err) => reject(new KrunboxError(`cannot run ${program} (is krunbox installed?): ${err.message}`)));
    child.once("exit", () => reject(new KrunboxError(`krunbox serve exited: ${logged()}`)));
  });
  const listening = (async () => {
    const deadline = Date.now() + 15_000;
    while (!existsSync(socketPath)) {
      if (Date.now() > deadline) throw new KrunboxError("krunbox serve did not listen within 15 s");
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  failed.catch(() => {});
  try {
    await Promise.race([listening, failed]);
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  }
  // The server must not keep this process alive; it ends when our end of its stdin closes.
  child.unref();
  (child.stdin as unknown as { unref?: () => void })?.unref?.();
  return child;
}
