// Chat templates: messages -> prompt text, as the model's tokenizer_config.json chat_template
// renders them. Debian 12 packages no C++ Jinja engine, so tpserve carries renderers for the
// templates it has verified against the reference renderer (@huggingface/jinja), recognised by a
// fingerprint of the template text; any other template is a clear error that lists these.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/tokenizer/tokenizer.h"

namespace tpserve {

struct ChatMessage {
  std::string role;  // system | user | assistant | tool
  std::string content;
  std::optional<std::string> reasoning_content;  // assistant turns of reasoning models
};

struct ChatOptions {
  bool add_generation_prompt = true;
  std::optional<bool> enable_thinking;  // Qwen3: false renders an empty <think></think>
};

// The names of the supported templates and where they come from, for messages and docs.
std::string SupportedChatTemplates();
// "llama3", "qwen3", ... for a template text tpserve can render, "" otherwise.
std::string ChatTemplateName(const std::string& template_text);

// Renders `messages` with config.chat_template. The result is meant to be encoded with
// add_special_tokens = false (the templates write BOS themselves).
Result<std::string> RenderChat(const TokenizerConfig& config, const std::vector<ChatMessage>& messages,
                               const ChatOptions& options);

}  // namespace tpserve
