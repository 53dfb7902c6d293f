// Files a crash cannot half-write: the bytes go to a temporary file in the same directory,
// which is fsynced, renamed over the target (atomic on POSIX file systems) and followed by an
// fsync of the directory, so the rename itself survives a power cut. A reader sees the old
// file or the new one, never a fragment; a failure at any point leaves the old file as it was.
import { randomBytes } from 'node:crypto';
import { open, readdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { withFile } from '../errors.js';

/** Writes `bytes` to `file` atomically; `what` names it in an error ("checkpoint", ...). */
export async function writeFileAtomic(
  file: string,
  bytes: Uint8Array | string,
  what: string,
): Promise<void> {
  const dir = dirname(file);
  const temp = join(dir, `.${basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  await withFile(file, `cannot write ${what} ${file}`, async () => {
    try {
      const handle = await open(temp, 'wx', 0o644);
      try {
        const fault = injectedFault(file);
        await handle.writeFile(fault === null ? bytes : Buffer.from(bytes).subarray(0, fault));
        if (fault !== null) {
          throw Object.assign(new Error(`ENOSPC: no space left on device, write (injected)`), {
            code: 'ENOSPC',
          });
        }
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temp, file);
    } catch (err) {
      await rm(temp, { force: true });
      throw err;
    }
    await syncDirectory(dir);
  });
}

/** The temporary file of a write in progress: `.NAME.PID.HEX.tmp`. */
const TEMP_FILE = /^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$/;

/**
 * Removes from `dir` the temporary files of writes that a killed process left (SIGKILL, a
 * power cut): those whose writer is no longer running. Returns their names.
 */
export async function removeInterruptedWrites(dir: string): Promise<string[]> {
  const left = (await readdir(dir)).filter((f) => {
    const m = TEMP_FILE.exec(f);
    return m !== null && !isRunning(Number(m[1]));
  });
  await Promise.all(left.map((f) => rm(join(dir, f), { force: true })));
  return left;
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** fsync a directory, so that a rename or a new name in it is on disk. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Fault injection, for the tests that show a failed write leaves the previous file intact:
 * with WRITE_FAULT_FOR_FFX=NAME@BYTES in the environment, writing a file whose name contains
 * NAME writes BYTES bytes and then fails as a full disk does (ENOSPC). (Not FFX_*: yargs reads
 * those as flags.)
 */
export const WRITE_FAULT_ENV = 'WRITE_FAULT_FOR_FFX';

/** The byte count after which writing `file` fails, if a fault is injected for it. */
function injectedFault(file: string): number | null {
  const m = /^(.+)@(\d+)$/.exec(process.env[WRITE_FAULT_ENV] ?? '');
  return m && basename(file).includes(m[1]!) ? Number(m[2]) : null;
}
