import * as path from 'path';

import { expect, test } from '@playwright/test';

import {
  API_URL,
  AUTH,
  BASE_URL,
  BUILD_TIMEOUT,
  hideNotifications,
  openLab,
  SCREENSHOTS,
  shutDownKernelsOf,
  waitOperation
} from './lab';

/*
 * A notebook that carries its environment, opened where that environment is missing: the
 * notebook says so, shows what recreating it would install, recreates it from the dialog, and
 * its code runs on it.
 */

const ENV_NAME = 'nbui';
const NOTEBOOK = 'recorded.ipynb';
const CODE =
  "import os, six; print('six', six.__version__, os.path.exists('/.dockerenv'))";

test('a notebook recreates its missing environment and runs on it', async ({
  page,
  request
}) => {
  // Given a notebook saved on an environment's kernel
  await shutDownKernelsOf(request, ENV_NAME);
  await request.delete(`${API_URL}envs/${ENV_NAME}`, { headers: AUTH });
  const created = await request.post(`${API_URL}envs`, {
    headers: AUTH,
    data: { name: ENV_NAME, pip: ['six==1.16.0'] }
  });
  expect(created.status(), await created.text()).toBe(201);
  const build = await request.post(`${API_URL}envs/${ENV_NAME}/builds`, {
    headers: AUTH,
    data: {}
  });
  const built = await waitOperation(request, (await build.json()).id);
  expect(built.state, built.log.slice(-20).join('\n')).toBe('succeeded');
  const saved = await request.put(`${BASE_URL}api/contents/${NOTEBOOK}`, {
    headers: AUTH,
    data: {
      type: 'notebook',
      format: 'json',
      content: {
        nbformat: 4,
        nbformat_minor: 5,
        metadata: {
          kernelspec: {
            name: `docker-env-${ENV_NAME}`,
            display_name: `${ENV_NAME} (Docker env)`,
            language: 'python'
          }
        },
        cells: [
          {
            cell_type: 'code',
            id: 'recorded-cell',
            source: CODE,
            metadata: {},
            outputs: [],
            execution_count: null
          }
        ]
      }
    }
  });
  expect(saved.ok(), await saved.text()).toBeTruthy();
  const model = await (
    await request.get(`${BASE_URL}api/contents/${NOTEBOOK}`, { headers: AUTH })
  ).json();
  expect(model.content.metadata.docker_env.env).toBe(ENV_NAME);
  // and its environment is gone: folder and images
  const deleted = await request.delete(`${API_URL}envs/${ENV_NAME}`, {
    headers: AUTH
  });
  expect(deleted.status()).toBe(204);

  // When the user opens the notebook
  await openLab(page, NOTEBOOK);
  await hideNotifications(page);
  const notebook = page.locator('.jp-NotebookPanel:visible');
  await expect(notebook).toBeVisible();
  // (JupyterLab asks for a kernel, as its kernel is not here: keep none for now)
  const chooser = page
    .locator('.jp-Dialog')
    .filter({ hasText: 'Select Kernel' });
  await chooser.waitFor({ timeout: 30_000 });
  await chooser.locator('.jp-Dialog-button.jp-mod-reject').click();

  // Then the notebook says its environment is missing
  const item = notebook.getByTestId('notebook-env-item');
  await expect(item).toBeVisible();
  await expect(item).toHaveAttribute('data-state', 'missing');
  await expect(item).toContainText('Environment missing');

  // When the user opens it
  await item.click();
  const dialog = page
    .locator('.jp-Dialog')
    .filter({ has: page.getByTestId('notebook-env') });
  const view = dialog.getByTestId('notebook-env');
  // Then it says what is missing, and shows the base image and packages before anything runs
  await expect(view.getByTestId('notebook-env-message')).toContainText(
    `saved on environment ${ENV_NAME}`
  );
  await expect(view.getByTestId('notebook-env-message')).toContainText(
    'which is not here'
  );
  await expect(view.getByTestId('notebook-env-base')).not.toBeEmpty();
  await view.getByTestId('notebook-env-pip').locator('summary').click();
  await expect(view.getByTestId('notebook-env-pip')).toContainText(
    'six==1.16.0'
  );
  await expect(view.getByTestId('notebook-env-pip')).toContainText(
    'ipykernel=='
  );
  await dialog.screenshot({
    path: path.join(SCREENSHOTS, 'notebook-env-missing.png')
  });

  // When the user recreates it
  await view.getByTestId('notebook-env-recreate').click();
  // Then it is recreated as an operation followed in the dialog, and the notebook switches to it
  const operation = view.getByTestId('operation');
  await expect(operation).toHaveAttribute('data-operation-kind', 'restore');
  await expect(view.getByTestId('notebook-env-done')).toBeVisible({
    timeout: BUILD_TIMEOUT
  });
  await expect(operation).toHaveAttribute('data-operation-state', 'succeeded');
  await expect(view.getByTestId('notebook-env-done')).toContainText(
    `kernel docker-env-${ENV_NAME}`
  );
  await dialog.screenshot({
    path: path.join(SCREENSHOTS, 'notebook-env-restored.png')
  });
  await dialog.locator('.jp-Dialog-button.jp-mod-reject').click();
  await expect(item).toBeHidden();

  // When the user runs the cell
  await expect(notebook.locator('.jp-KernelName')).toHaveText(
    `${ENV_NAME} (Docker env)`
  );
  await expect(
    notebook.locator('.jp-Notebook-ExecutionIndicator')
  ).toHaveAttribute('data-status', 'idle', { timeout: 120_000 });
  await notebook.locator('.jp-Cell .cm-content').first().click();
  await page.keyboard.press('Shift+Enter');
  // Then it runs on the recreated environment, in a container
  const output = notebook.locator('.jp-OutputArea-output').first();
  await expect(output).toContainText('six 1.16.0 True', { timeout: 120_000 });
  await page.screenshot({
    path: path.join(SCREENSHOTS, 'notebook-env-running.png')
  });

  await shutDownKernelsOf(request, ENV_NAME);
});
