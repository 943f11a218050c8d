-- Items and library assets record the prompt the worker rendered (`prompt`:
-- the enhanced prompt where the job was enhanced), the prompt as the user typed
-- it (`original_prompt`) and the negative prompt rendered. Rows filed before
-- kept the typed prompt in `prompt`, so it is their original too; their
-- negative prompt was not recorded and stays empty.
-- depends: workspace_0002_role_policies

ALTER TABLE workspace.items
    ADD COLUMN original_prompt text NOT NULL DEFAULT '',
    ADD COLUMN negative_prompt text NOT NULL DEFAULT '';
ALTER TABLE workspace.library_assets
    ADD COLUMN original_prompt text NOT NULL DEFAULT '',
    ADD COLUMN negative_prompt text NOT NULL DEFAULT '';

-- The policies bind the service's login role only, and FORCE holds the owner
-- (who runs this) to them: lifted for the backfill, in this transaction.
ALTER TABLE workspace.items NO FORCE ROW LEVEL SECURITY;
ALTER TABLE workspace.library_assets NO FORCE ROW LEVEL SECURITY;
UPDATE workspace.items SET original_prompt = prompt;
UPDATE workspace.library_assets SET original_prompt = prompt;
ALTER TABLE workspace.items FORCE ROW LEVEL SECURITY;
ALTER TABLE workspace.library_assets FORCE ROW LEVEL SECURITY;
