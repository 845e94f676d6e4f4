import * as path from 'path';

import { APIRequestContext, expect, Page } from '@playwright/test';

/*
 * What the UI tests share: the JupyterLab they drive (JDE_LAB_URL, JDE_LAB_TOKEN), its REST API,
 * and a few steps every test takes.
 */

export const LAB_URL = process.env.JDE_LAB_URL ?? 'http://127.0.0.1:8888/lab';
export const TOKEN = process.env.JDE_LAB_TOKEN ?? '';
export const BUILD_TIMEOUT = 300_000;
export const SCREENSHOTS = path.join(__dirname, '..', 'screenshots');

/** The server's base URL: the lab URL less its trailing `lab`. */
export const BASE_URL = LAB_URL.replace(/\/lab\/?(\?.*)?$/, '/');
export const API_URL = `${BASE_URL}jupyter-docker-env/api/`;
export const AUTH = TOKEN ? { Authorization: `token ${TOKEN}` } : undefined;

/** Opens JupyterLab on a fresh layout, or on a file (`tree/PATH`). */
export async function openLab(page: Page, file?: string): Promise<void> {
  const url = new URL(file ? `${LAB_URL}/tree/${file}` : LAB_URL);
  if (TOKEN) {
    url.searchParams.set('token', TOKEN);
  }
  // A fresh layout, whatever earlier runs left open.
  url.searchParams.set('reset', '');
  await page.goto(url.toString());
  await page.locator('#jupyterlab-splash').waitFor({ state: 'detached' });
  await page.locator('.jp-LabShell').waitFor();
}

/** Hides notifications (such as the news opt-in) that would cover part of a screenshot. */
export async function hideNotifications(page: Page): Promise<void> {
  await page.addStyleTag({
    content: '.Toastify { display: none !important; }'
  });
}

/** Shuts down the kernels of an environment, if it exists. */
export async function shutDownKernelsOf(
  request: APIRequestContext,
  name: string
): Promise<void> {
  const reply = await request.get(`${API_URL}envs/${name}`, { headers: AUTH });
  if (!reply.ok()) {
    return;
  }
  const { kernel_name } = await reply.json();
  const kernels = await (
    await request.get(`${BASE_URL}api/kernels`, { headers: AUTH })
  ).json();
  for (const kernel of kernels as { id: string; name: string }[]) {
    if (kernel.name === kernel_name) {
      await request.delete(`${BASE_URL}api/kernels/${kernel.id}`, {
        headers: AUTH
      });
    }
  }
}

/** Waits for an operation (build, push, pull, restore) to end; answers its last state. */
export async function waitOperation(
  request: APIRequestContext,
  id: string
): Promise<{ state: string; log: string[] }> {
  let operation = { state: 'queued', log: [] as string[] };
  await expect
    .poll(
      async () => {
        const reply = await request.get(`${API_URL}operations/${id}`, {
          headers: AUTH
        });
        operation = await reply.json();
        return operation.state;
      },
      { timeout: BUILD_TIMEOUT, intervals: [500] }
    )
    .not.toMatch(/^(queued|running)$/);
  return operation;
}

/** Drags the left sidebar's edge so that the panel is `width` pixels wide (for the screenshots). */
export async function widenSidebar(page: Page, width: number): Promise<void> {
  const sidebar = await page.locator('#jp-left-stack').boundingBox();
  const handle = page
    .locator('#jp-main-split-panel > .lm-SplitPanel-handle')
    .first();
  const box = await handle.boundingBox();
  if (!sidebar || !box) {
    return;
  }
  const y = box.y + box.height / 2;
  await page.mouse.move(box.x + box.width / 2, y);
  await page.mouse.down();
  await page.mouse.move(sidebar.x + width, y, { steps: 5 });
  await page.mouse.up();
}

/** Opens the Docker environments panel in the left sidebar (unless it is open). */
export async function openPanel(page: Page): Promise<void> {
  const tab = page.locator(
    '.jp-SideBar .lm-TabBar-tab[data-id="jupyter-docker-env-panel"]'
  );
  // Clicking the tab of the open panel would close it.
  if (!/lm-mod-current/.test((await tab.getAttribute('class')) ?? '')) {
    await tab.click();
  }
  await page.getByTestId('docker-env-panel').waitFor();
}
