// ZeroMQ endpoints given on the command line. ZeroMQ answers a missing scheme or port with
// `EINVAL: Invalid argument` and a stack; a user gets a usage error that shows the right form.
import { UsageError } from '../errors.js';

/**
 * `value` if it is a tcp://HOST:PORT or ipc://PATH endpoint (a port of `*` only where the
 * process binds); otherwise a usage error naming the flag and the form it takes.
 */
export function parseEndpoint(value: string, flag: string, use: 'bind' | 'connect'): string {
  const port = use === 'bind' ? '\\d+|\\*' : '\\d+';
  const tcp = new RegExp(`^tcp://(\\[[0-9a-fA-F:.]+\\]|[^\\s:/\\[\\]]+):(${port})$`).exec(value);
  const portOk = !tcp || tcp[2] === '*' || (Number(tcp[2]) >= 1 && Number(tcp[2]) <= 65535);
  if ((tcp && portOk) || /^ipc:\/\/\S+$/.test(value)) return value;
  const example =
    use === 'bind' ? 'tcp://0.0.0.0:6000 or tcp://127.0.0.1:*' : 'tcp://10.0.0.1:5555';
  let hint = '';
  if (/^\d+$/.test(value)) hint = ` (did you mean tcp://127.0.0.1:${value}?)`;
  else if (/^[^:/\s]+:(\d+|\*)$/.test(value)) hint = ` (did you mean tcp://${value}?)`;
  throw new UsageError(
    `${flag} must be a ZeroMQ endpoint, tcp://HOST:PORT or ipc://PATH, e.g. ${example}; got "${value}"${hint}`,
    'BAD_ENDPOINT',
  );
}
