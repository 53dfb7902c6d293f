// Reading a process's Prometheus /metrics in tests.
import assert from 'node:assert/strict';

/** The /metrics URL a process logged ("metrics on http://127.0.0.1:PORT/metrics"). */
export function metricsUrl(log: string): string {
  const url = /metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(log)?.[1];
  assert.ok(url, `no metrics URL in\n${log.slice(0, 2000)}`);
  return url;
}

/** The value of one series (name and labels as exposed) in a scrape; asserts it is there. */
export function seriesValue(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  assert.ok(line, `no ${series} in the scrape`);
  return Number(line.split(' ')[1]);
}

export async function scrape(url: string): Promise<string> {
  return (await fetch(url)).text();
}
