/** An error the server answered with, or a failure to reach it. */
export class KrunboxError extends Error {
  /** The API's error kind: bad_request, not_found, conflict, unauthorized, cross_origin, internal. */
  readonly kind: string;
  /** The HTTP status, when there was one. */
  readonly status?: number;

  constructor(message: string, kind = "internal", status?: number) {
    super(message);
    this.name = "KrunboxError";
    this.kind = kind;
    this.status = status;
  }

  /** From an error response's body. */
  static fromBody(status: number, body: Buffer): KrunboxError {
    try {
      const { error } = JSON.parse(body.toString("utf8"));
      return new KrunboxError(String(error.message), String(error.kind), status);
    } catch {
      return new KrunboxError(`HTTP ${status}: ${body.toString("utf8").slice(0, 200)}`, "internal", status);
    }
  }
}
