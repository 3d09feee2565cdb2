/** A test's view of a terminal: its output as text, and waiting for a pattern in what came after a mark. */
export class Screen {
  text = '';
  bytes: Buffer[] = [];
  private waiters: Array<() => void> = [];

  readonly onData = (d: Uint8Array): void => {
    const b = Buffer.from(d);
    this.bytes.push(b);
    this.text += b.toString('latin1');
    for (const w of this.waiters.splice(0)) w();
  };

  /** Where the output is now: `until(re, mark)` looks only at what comes after it. */
  mark(): number {
    return this.text.length;
  }

  async until(re: RegExp, from = 0, ms = 10_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.text.slice(from).match(re);
      if (m) return m;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re}; the terminal shows ${JSON.stringify(this.text.slice(from).slice(-600))}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 100);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }
}
