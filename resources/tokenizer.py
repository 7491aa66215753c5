from dagster import ConfigurableResource
from pydantic import Field

from curation.core.config import ProjectConfig
from curation.format.render import load_format_tokenizer


class TokenizerResource(ConfigurableResource):
    """The target model's tokenizer and chat template. By default the project file's `format.tokenizer`
    and `format.chat_template`; set `path` / `chat_template` here to render the same project for another
    model without editing the file (e.g. in a job's run config)."""

    path: str | None = Field(default=None, description="Local tokenizer directory or hub id (overrides the project).")
    chat_template: str | None = Field(default=None, description="Template name, .jinja path or Jinja text.")

    def load(self, config: ProjectConfig):  # -> transformers.PreTrainedTokenizerBase (imported lazily)
        settings = config.format
        overrides = {k: v for k, v in (("tokenizer", self.path), ("chat_template", self.chat_template)) if v}
        if overrides:
            config = config.model_copy(update={"format": settings.model_copy(update=overrides)})
        return load_format_tokenizer(config)
