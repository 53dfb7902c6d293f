// A real headless browser for the tests that look at a page: Debian's chromium (or the one
// FFX_TEST_BROWSER names), driven with puppeteer-core. A page records what went wrong on it:
// console errors and warnings, uncaught exceptions, dialogs, and any request off the disk.
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';

const NAMES = ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable'];

/** The browser to drive; an error that says how to get one if there is none. */
export function findBrowser(): string {
  const named = process.env.FFX_TEST_BROWSER;
  if (named) return named;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    for (const name of NAMES) {
      const file = join(dir, name);
      try {
        accessSync(file, constants.X_OK);
        return file;
      } catch {
        // not here
      }
    }
  }
  throw new Error(
    "no headless browser for the report test: install Debian's chromium (apt-get install chromium) " +
      'or set FFX_TEST_BROWSER to a Chrome or Chromium executable',
  );
}

export function launchBrowser(): Promise<Browser> {
  return puppeteer.launch({
    executablePath: findBrowser(),
    headless: true,
    // Root in a container has no user namespace for Chromium's sandbox.
    args: ['--no-sandbox', '--disable-gpu'],
    timeout: 60_000,
  });
}

export interface OpenedPage {
  page: Page;
  /** Everything that went wrong on the page, one line each. */
  problems: string[];
}

/** Opens a local file; `problems` fills as the page runs. */
export async function openFile(browser: Browser, file: string): Promise<OpenedPage> {
  const page = await browser.newPage();
  await page.setViewport({ width: 1200, height: 900 });
  const problems: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warn')
      problems.push(`console.${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`uncaught: ${(e as Error).message}`));
  page.on('dialog', (d) => {
    problems.push(`dialog: ${d.message()}`);
    void d.dismiss();
  });
  page.on('request', (r) => {
    if (!r.url().startsWith('file:')) problems.push(`request: ${r.url()}`);
  });
  page.on('requestfailed', (r) => problems.push(`failed: ${r.url()}`));
  await page.goto(pathToFileURL(file).href, { waitUntil: 'load', timeout: 30_000 });
  return { page, problems };
}

/**
 * The data marks a Vega chart drew in `selector` (points, bars, cells; not axes, legends or
 * whole lines), each as the fields of its ARIA label ("epoch: 1; loss: 0.52" -> {epoch, loss}).
 */
export async function chartMarks(page: Page, selector: string): Promise<Record<string, string>[]> {
  const labels = await page.$$eval(`${selector} svg [role="graphics-symbol"][aria-label]`, (els) =>
    els
      .filter(
        (e) =>
          !['axis', 'legend', 'line mark'].includes(e.getAttribute('aria-roledescription') ?? ''),
      )
      .map((e) => e.getAttribute('aria-label')!),
  );
  return labels.map((l) =>
    Object.fromEntries(
      l.split('; ').map((kv) => {
        const i = kv.indexOf(': ');
        return [kv.slice(0, i), kv.slice(i + 2)];
      }),
    ),
  );
}
