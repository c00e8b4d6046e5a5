"""AB-Cache for ComfyUI: the entry point ComfyUI's custom-node loader calls (v3 API)."""


async def comfy_entrypoint():
    from .nodes import ABCacheExtension

    return ABCacheExtension()
