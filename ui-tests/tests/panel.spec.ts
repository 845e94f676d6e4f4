import * as path from 'path';

import { APIRequestContext, expect, test } from '@playwright/test';

import {
  API_URL,
  AUTH,
  BASE_URL,
  BUILD_TIMEOUT,
  hideNotifications,
  openLab,
  openPanel,
  SCREENSHOTS,
  shutDownKernelsOf,
  widenSidebar
} from './lab';

/*
 * The main path through the panel, against a real JupyterLab with jupyter-docker-env and a real
 * Docker engine: create an environment, build it, open a notebook on its kernel, and check that
 * the code runs in a container that sees the workspace.
 */

/** Optional pip packages for the test environment, comma separated (none by default). */
const PIP = (process.env.JDE_UITEST_PIP ?? '')
  .split(',')
  .map(p => p.trim())
  .filter(p => p);
const ENV_NAME = 'uitest';

test('create, build and use an environment from the panel', async ({
  page,
  request
}) => {
  // Given a JupyterLab with the extension and a working Docker engine
  const statusReply = await request.get(`${API_URL}status`, { headers: AUTH });
  expect(statusReply.ok(), await statusReply.text()).toBeTruthy();
  const status = await statusReply.json();
  expect(status.engine.available, status.engine.reason ?? '').toBe(true);
  // and no environment left from an earlier run, nor kernels that hold its image
  await shutDownKernelsOf(request, ENV_NAME);
  const old = await request.delete(`${API_URL}envs/${ENV_NAME}`, {
    headers: AUTH
  });
  expect([204, 404], await old.text()).toContain(old.status());

  await openLab(page);
  await hideNotifications(page);

  // When the user opens the sidebar panel
  await openPanel(page);
  const panel = page.getByTestId('docker-env-panel');
  await expect(panel).toBeVisible();
  await widenSidebar(page, 380);
  const registryAsked: string[] = [];
  page.on('request', req => {
    if (req.url().endsWith(`/envs/${ENV_NAME}/registry`)) {
      registryAsked.push(req.url());
    }
  });
  await expect(panel.getByTestId('engine-banner')).toHaveCount(0);
  await expect(panel.getByTestId('load-error')).toHaveCount(0);

  // and creates an environment on the default base image
  await panel.getByTestId('new-env').click();
  const form = panel.getByTestId('create-form');
  // (a name the server refuses is explained next to the name field)
  await form.getByTestId('env-name').fill('not a name!');
  await form.getByTestId('env-submit').click();
  await expect(form.getByTestId('field-error-name')).toBeVisible();
  await form.getByTestId('env-name').fill(ENV_NAME);
  await expect(form.getByTestId('env-base')).toHaveValue(status.default_base);
  if (PIP.length) {
    await form.getByTestId('env-pip').fill(PIP.join('\n'));
  }
  await form.getByTestId('env-submit').click();
  await expect(form).toHaveCount(0);
  const card = panel.getByTestId(`env-${ENV_NAME}`);
  await expect(card).toBeVisible();
  await expect(card.getByTestId('env-state')).toHaveText('not built');
  await expect(card.getByTestId('env-base-image')).toHaveText(
    status.default_base
  );

  // and builds it, every layer anew so that the progress shows
  await card.getByTestId('no-cache').check();
  await card.getByTestId('build').click();

  // Then the build shows its progress and its live log
  const operation = card.getByTestId('operation');
  await expect(operation).toHaveAttribute('data-operation-kind', 'build');
  await expect(operation.getByTestId('operation-progress')).toBeVisible();
  await expect(operation.getByTestId('operation-progress-text')).toContainText(
    /step \d+ of \d+/,
    { timeout: 60_000 }
  );
  await expect(operation.getByTestId('operation-log')).not.toBeEmpty();
  await page.screenshot({
    path: path.join(SCREENSHOTS, 'panel-building.png')
  });

  // and ends with the environment built
  await expect(card).toHaveAttribute('data-state', 'built', {
    timeout: BUILD_TIMEOUT
  });
  await expect(card.getByTestId('env-state')).toHaveText('built');
  await expect(card.getByTestId('operation-failure')).toHaveCount(0);
  await expect(card.getByTestId('env-size')).not.toHaveText('—');
  await page.screenshot({ path: path.join(SCREENSHOTS, 'panel-built.png') });
  const env = await (
    await request.get(`${API_URL}envs/${ENV_NAME}`, { headers: AUTH })
  ).json();
  // and the footer names the builder the engine offers
  await expect(panel.getByTestId('status-footer')).toContainText(
    status.engine.builder === 'buildkit' ? 'BuildKit' : 'legacy builder'
  );

  // When the user opens the details
  await card.getByTestId('details').locator(':scope > summary').click();
  // Then the lock lists what the kernel's venv holds and the base image's digest
  const lock = card.getByTestId('env-lock');
  await expect(lock.getByTestId('lock-pip')).toContainText('ipykernel==');
  await expect(lock.getByTestId('lock-pip_base')).toBeVisible();
  await expect(lock.getByTestId('lock-base-image')).toHaveText(
    env.lock.base.image
  );
  await expect(lock.getByTestId('lock-base-digest')).toHaveText(
    env.lock.base.digest || 'none (a local image)'
  );
  await card.getByTestId('operation-log-toggle').click();
  await card.screenshot({ path: path.join(SCREENSHOTS, 'panel-lock.png') });
  await card.getByTestId('details').locator(':scope > summary').click();

  if (status.registry) {
    // When the user opens the sharing section, the registry is asked (not before)
    const sharing = card.getByTestId('sharing');
    expect(registryAsked).toEqual([]);
    await sharing.locator(':scope > summary').click();
    await expect(sharing.getByTestId('registry-image')).toHaveText(
      env.registry
    );
    await expect(sharing.getByTestId('registry-state')).toHaveText(
      'not in the registry'
    );
    // and pushes the image
    await sharing.getByTestId('push').click();
    // Then the push runs as an operation and the registry is asked again when it ends
    await expect(card.getByTestId('operation')).toHaveAttribute(
      'data-operation-state',
      'succeeded',
      { timeout: BUILD_TIMEOUT }
    );
    await expect(card.getByTestId('operation')).toHaveAttribute(
      'data-operation-kind',
      'push'
    );
    await expect(sharing.getByTestId('registry-state')).toHaveText(
      'in the registry'
    );
    await card.screenshot({
      path: path.join(SCREENSHOTS, 'panel-shared.png')
    });
  }

  // When the user opens a notebook on the environment's kernel and runs a cell
  // (a kernel size the server refuses is explained next to its field)
  await card
    .getByTestId('kernel-resources')
    .locator(':scope > summary')
    .click();
  await card.getByTestId('kernel-memory').fill('lots');
  await card.getByTestId('open-notebook').click();
  await expect(card.getByTestId('field-error-memory')).toContainText('memory');
  await card.getByTestId('kernel-memory').fill('');
  await card.getByTestId('open-notebook').click();
  const notebook = page.locator('.jp-NotebookPanel:visible');
  await expect(notebook).toBeVisible();
  await expect(notebook.locator('.jp-KernelName')).toHaveText(
    env.display_name ?? env.kernel_name
  );
  // Typing before the kernel is ready can be lost when the session settles.
  await expect(
    notebook.locator('.jp-Notebook-ExecutionIndicator')
  ).toHaveAttribute('data-status', 'idle', { timeout: 120_000 });
  const code =
    "import os; print(os.path.exists('/.dockerenv'), os.getcwd(), sorted(os.listdir('.')))";
  const editor = notebook.locator('.jp-Cell .cm-content').first();
  await editor.click();
  await editor.fill(code);
  await expect(editor).toHaveText(code);
  await page.keyboard.press('Shift+Enter');

  // Then the code ran in a container that sees the workspace
  const output = notebook.locator('.jp-OutputArea-output').first();
  await expect(output).toContainText('True', { timeout: 120_000 });
  await expect(output).toContainText("'hello.txt'");
  // (/.dockerenv alone proves little where JupyterLab itself runs in a container)
  const sessions = await (
    await request.get(`${BASE_URL}api/sessions`, { headers: AUTH })
  ).json();
  expect(
    sessions.map((s: { kernel: { name: string } }) => s.kernel.name)
  ).toContain(env.kernel_name);
  await page.screenshot({
    path: path.join(SCREENSHOTS, 'notebook-in-container.png')
  });

  // When the user serves a model from the workspace (a training run's output) from the panel
  await putFile(request, 'models', null);
  await putFile(
    request,
    'models/model.json',
    JSON.stringify({ weights: [2, -1], bias: 0.5 })
  );
  await putFile(request, 'serve.py', SERVING_HANDLER);
  const serving = card.getByTestId('serving');
  await serving.locator(':scope > summary').click();
  await expect(serving.getByTestId('serving-handler')).toHaveValue(
    'serve.py:predict'
  );
  // (a model that is not there is explained next to its field)
  await serving.getByTestId('serving-model').fill('models/missing.json');
  await serving.getByTestId('serving-build').click();
  await expect(serving.getByTestId('field-error-model')).toContainText(
    'does not exist'
  );
  await serving.getByTestId('serving-model').fill('models/model.json');
  await serving.getByTestId('serving-build').click();
  // Then it is built as an operation, and listed with its size next to the environment's
  const servingOperation = serving.getByTestId('operation');
  await expect(servingOperation).toHaveAttribute(
    'data-operation-kind',
    'serving-build'
  );
  await expect(servingOperation).toHaveAttribute(
    'data-operation-state',
    'succeeded',
    { timeout: BUILD_TIMEOUT }
  );
  const served = serving.getByTestId('serving-image');
  await expect(served).toHaveCount(1);
  await expect(served.getByTestId('serving-image-size')).toContainText(
    "the environment's"
  );
  await expect(serving.locator(':scope > summary')).toHaveText(
    'Serving · 1 image'
  );
  // (the screenshot shows the serving section: the log and the other sections closed)
  await serving.getByTestId('operation-log-toggle').click();
  for (const open of ['kernel-resources', 'sharing']) {
    const section = card.getByTestId(open);
    if (
      (await section.count()) &&
      (await section.getAttribute('open')) !== null
    ) {
      await section.locator(':scope > summary').click();
    }
  }
  await card.screenshot({ path: path.join(SCREENSHOTS, 'panel-serving.png') });
  // When the user deletes it, Then it is gone
  await served.getByTestId('serving-delete').click();
  await page.locator('.jp-Dialog .jp-mod-warn').click();
  await expect(served).toHaveCount(0);

  // Leave no kernel running on the test image.
  await shutDownKernelsOf(request, ENV_NAME);
});

/** A serving handler with nothing but the standard library (the test environment's runtime). */
const SERVING_HANDLER = `import json

MODEL = {}


def load(path):
    with open(path) as f:
        MODEL.update(json.load(f))


def predict(payload):
    x = payload["features"]
    return {"prediction": sum(w * v for w, v in zip(MODEL["weights"], x)) + MODEL["bias"]}
`;

/** Writes a file (or, with null, makes a folder) in the workspace through the contents API. */
async function putFile(
  request: APIRequestContext,
  where: string,
  content: string | null
): Promise<void> {
  const reply = await request.put(`${BASE_URL}api/contents/${where}`, {
    headers: AUTH,
    data:
      content === null
        ? { type: 'directory' }
        : { type: 'file', format: 'text', content }
  });
  expect(reply.ok(), await reply.text()).toBeTruthy();
}
