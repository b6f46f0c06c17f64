"""A machine without the model hub, for the tests of what offline users see."""


def unreachable_hub_env(home) -> dict[str, str]:
    """Environment variables of a machine without the model hub: its host name cannot resolve (.invalid never
    does, RFC 6761), no proxy would resolve it instead, and the Hugging Face cache in ``home`` is empty."""
    return {
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": "https://hub.invalid",
        "HF_HOME": str(home),
        "NO_PROXY": "*",
        "no_proxy": "*",
    }
