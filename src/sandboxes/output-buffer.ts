/**
 * Keeps the first `limit` bytes of a stream and counts the rest. Output comes
 * from inside a sandbox, so nothing here grows past its limit.
 */
export class BoundedOutput {
  private chunks: Buffer[] = [];
  private kept = 0;
  private dropped = 0;
  constructor(private readonly limit: number) {}

  push(chunk: Buffer): void {
    const room = this.limit - this.kept;
    if (room <= 0) {
      this.dropped += chunk.length;
      return;
    }
    const part = chunk.length <= room ? chunk : chunk.subarray(0, room);
    this.chunks.push(part);
    this.kept += part.length;
    this.dropped += chunk.length - part.length;
  }

  get truncated(): boolean {
    return this.dropped > 0;
  }

  /** UTF-8 with replacement characters for invalid or cut sequences. */
  text(): string {
    return Buffer.concat(this.chunks, this.kept).toString('utf8');
  }
}
