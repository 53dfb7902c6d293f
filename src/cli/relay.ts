// The launcher's terminal, shared by its children: each line tagged with the child it came
// from, and the coordinator's progress bar (redrawn in place with \r) kept on the last row,
// out of the way of the lines the others print meanwhile.

/** What a child's "\r...\x1b[K" redraw leaves visible. */
function visible(segment: string): string {
  return segment.replace(/\x1b\[K/g, ''); // eslint-disable-line no-control-regex
}

export class Terminal {
  private bar = '';

  constructor(private readonly out: NodeJS.WritableStream) {}

  /** A whole line, above the bar (which is drawn again below it). */
  line(text: string): void {
    if (this.bar) this.out.write('\r\x1b[K');
    this.out.write(`${text}\n`);
    if (this.bar) this.out.write(this.bar);
  }

  /** The progress bar's new state; '' clears it. */
  progress(text: string): void {
    this.bar = text;
    this.out.write(`\r${text}\x1b[K`);
  }
}

/**
 * Relays a child's output to `terminal`, each line tagged, a leading `own` (the child naming
 * itself) left out. A bar the child redraws with \r is relayed as the terminal's bar.
 */
export function relay(
  input: NodeJS.ReadableStream,
  terminal: Terminal,
  tag: string,
  own: string,
): void {
  const tagged = (text: string) => `${tag} ${text.startsWith(own) ? text.slice(own.length) : text}`;
  let pending = '';
  input.setEncoding('utf8');
  input.on('data', (chunk: string) => {
    pending += chunk;
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const line = visible(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
      // A line printed over the bar starts after the \r that cleared it.
      const text = line.slice(line.lastIndexOf('\r') + 1);
      if (line.includes('\r')) terminal.progress('');
      terminal.line(tagged(text));
    }
    const cr = pending.lastIndexOf('\r');
    if (cr >= 0) {
      // A redraw: the bar as it stands (empty when the child cleared it).
      pending = pending.slice(cr);
      const bar = visible(pending.slice(1));
      terminal.progress(bar ? tagged(bar) : '');
    }
  });
  input.on('end', () => {
    if (pending && !pending.startsWith('\r')) terminal.line(tagged(visible(pending)));
  });
}
