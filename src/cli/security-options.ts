// CurveZMQ on the command line: --key (this process's key pair), --trust (the cluster's public
// keys) and --insecure, and the rule that keeps a listener without keys off the network.
import type { Argv } from 'yargs';
import { UsageError } from '../errors.js';
import {
  KeyError,
  readKeyPair,
  readTrusted,
  trustedKeyOf,
  type KeyPair,
  type TrustedKey,
} from '../transport/curve.js';

export interface SecurityArgs {
  key?: string;
  trust?: string;
  insecure: boolean;
}

export function securityOptions<T>(y: Argv<T>) {
  return y
    .option('key', {
      type: 'string',
      describe: "this process's CurveZMQ key pair (a file ffx-keys makes); turns encryption on",
    })
    .option('trust', {
      type: 'string',
      describe: 'the cluster\'s public keys, one "<key> coordinator|stage|stage-N" a line',
    })
    .option('insecure', {
      type: 'boolean',
      default: false,
      describe:
        'allow listening beyond this host without keys (traffic unencrypted, anyone may connect)',
    });
}

/** The key pair and trusted keys of --key/--trust, or undefined without them. */
export async function loadSecurity(
  a: SecurityArgs,
): Promise<{ keys: KeyPair; trusted: TrustedKey[] } | undefined> {
  if (!a.key && !a.trust) return undefined;
  if (!a.key || !a.trust) {
    throw new UsageError('--key and --trust go together (ffx-keys DIR --stages N makes both)');
  }
  return { keys: await readKeyPair(a.key), trusted: await readTrusted(a.trust) };
}

/**
 * A coordinator's: its key pair and the trusted keys, where --trust lists this key as the
 * coordinator's (else its stages, which take the coordinator's key from the same file, could
 * never reach it, and would say nothing for minutes).
 */
export async function loadCoordinatorSecurity(
  a: SecurityArgs,
): Promise<{ keys: KeyPair; trusted: TrustedKey[] } | undefined> {
  const security = await loadSecurity(a);
  if (!security) return undefined;
  const listed = trustedKeyOf(security.trusted, 'coordinator', a.trust!);
  if (listed !== security.keys.publicKey) {
    throw new KeyError(
      `${a.trust} lists ${listed} as the coordinator's key, but --key ${a.key} holds ` +
        `${security.keys.publicKey}: stages that trust ${a.trust} would never reach this ` +
        'coordinator (give the key and the file ffx-keys made together)',
    );
  }
  return security;
}

/** A stage's: its key pair and the coordinator's key from --trust. */
export async function loadStageSecurity(
  a: SecurityArgs,
): Promise<{ keys: KeyPair; coordinatorKey: string } | undefined> {
  const security = await loadSecurity(a);
  if (!security) return undefined;
  return {
    keys: security.keys,
    coordinatorKey: trustedKeyOf(security.trusted, 'coordinator', a.trust!),
  };
}

/** tcp on a loopback address, or ipc: reachable from this host only. */
export function isLocal(endpoint: string): boolean {
  if (endpoint.startsWith('ipc://')) return true;
  const host = /^tcp:\/\/(\[[^\]]+\]|[^:]+):/.exec(endpoint)?.[1] ?? '';
  return host === 'localhost' || host === '[::1]' || /^127(\.\d{1,3}){3}$/.test(host);
}

/** Refuses to listen beyond this host without keys, unless --insecure says so. */
export function checkExposure(endpoint: string, flag: string, a: SecurityArgs): void {
  if (isLocal(endpoint) || a.key || a.insecure) return;
  throw new UsageError(
    `${flag} ${endpoint} listens beyond this host without encryption or authentication: ` +
      'give --key and --trust (ffx-keys DIR --stages N makes them), or --insecure to accept that',
  );
}
