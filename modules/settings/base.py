"""The settings of Easel's own features, A1111's names and defaults (`Settings` adds the
tools' settings, `modules/settings/tools.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from modules.settings.declare import (
    API,
    COMPAT,
    EXTENSIONS,
    FOLDER,
    IMG2IMG,
    INFOTEXT,
    OPTIMIZATIONS,
    PATHS,
    POLICY,
    PREVIEWS,
    SAMPLER,
    SAVING,
    SD,
    SDXL,
    UPSCALING,
    VAE,
    opt,
)


@dataclass(frozen=True)
class BaseOptions:
    """The core options, with A1111's names and defaults."""

    # Saving
    samples_save: bool = opt(True, "Always save all generated images", SAVING)
    samples_format: str = opt("png", "File format for images", SAVING,
                              choices=("png", "jpg", "jpeg", "webp"))
    samples_filename_pattern: str = opt("", "Images filename pattern", SAVING)
    save_to_dirs: bool = opt(True, "Save images to a subdirectory", SAVING)
    directories_filename_pattern: str = opt("[date]", "Directory name pattern", SAVING)
    grid_save: bool = opt(True, "Always save all generated image grids", SAVING)
    return_grid: bool = opt(True, "Show grid in gallery", SAVING)
    jpeg_quality: int = opt(80, "Quality for saved jpeg and webp images", SAVING,
                            minimum=1, maximum=100)
    enable_pnginfo: bool = opt(True, "Save text information about generation parameters", SAVING)
    # Paths
    outdir_txt2img_samples: str = opt("outputs/txt2img-images", "txt2img output folder", PATHS,
                                      guard=FOLDER)
    outdir_img2img_samples: str = opt("outputs/img2img-images", "img2img output folder", PATHS,
                                      guard=FOLDER)
    outdir_extras_samples: str = opt("outputs/extras-images", "Extras output folder", PATHS,
                                     guard=FOLDER)
    outdir_txt2img_grids: str = opt("outputs/txt2img-grids", "txt2img grids folder", PATHS,
                                    guard=FOLDER)
    outdir_img2img_grids: str = opt("outputs/img2img-grids", "img2img grids folder", PATHS,
                                    guard=FOLDER)
    # Stable Diffusion
    sd_model_checkpoint: str = opt("", "Stable Diffusion checkpoint", SD, infotext="Model hash")
    sd_checkpoints_limit: int = opt(1, "Checkpoints to cache in RAM", SD, minimum=1, maximum=10)
    sd_vae: str = opt("Automatic", "SD VAE", VAE, infotext="VAE")
    # Forge's option: how the diffusion model's layer weights are stored (models/lowbit_load).
    forge_unet_storage_dtype: str = opt(
        "Automatic", "Diffusion in Low Bits", SD, infotext="Diffusion in Low Bits",
        choices=("Automatic", "Automatic (fp16 LoRA)", "float8-e4m3fn",
                 "float8-e4m3fn (fp16 LoRA)", "float8-e5m2", "float8-e5m2 (fp16 LoRA)"))
    # Forge's option: separate VAE / text encoder files (names inside models/VAE/ and
    # models/text_encoder/) that complete or replace an SD3 / Flux checkpoint's parts.
    forge_additional_modules: tuple = opt((), "VAE / Text Encoder", SD)
    CLIP_stop_at_last_layers: int = opt(1, "Clip skip", SD, infotext="Clip skip",
                                        minimum=1, maximum=12)
    emphasis: str = opt("Original", "Emphasis mode", SD, infotext="Emphasis",
                        choices=("Original", "No norm", "Ignore", "None"))
    comma_padding_backtrack: int = opt(20, "Prompt word wrap length limit", SD,
                                       minimum=0, maximum=74)
    enable_prompt_comments: bool = opt(True, "Enable # comments in prompts", SD)
    randn_source: str = opt("GPU", "Random number generator source", SD, infotext="RNG",
                            choices=("GPU", "CPU", "NV"))
    img2img_fix_steps: bool = opt(False, "With img2img, do exactly the amount of steps the "
                                  "slider specifies", IMG2IMG)
    initial_noise_multiplier: float = opt(1.0, "Noise multiplier for img2img", IMG2IMG,
                                          infotext="Noise multiplier", minimum=0.0, maximum=1.5)
    inpainting_mask_weight: float = opt(1.0, "Inpainting conditioning mask strength", IMG2IMG,
                                        infotext="Conditional mask weight",
                                        minimum=0.0, maximum=1.0)
    img2img_color_correction: bool = opt(False, "Apply color correction to img2img results "
                                         "to match original colors", IMG2IMG)
    img2img_background_color: str = opt("#ffffff", "With img2img, fill transparent parts of "
                                        "the input image with this color", IMG2IMG)
    overlay_inpaint: bool = opt(True, "Overlay original for inpaint", IMG2IMG)
    upscaler_for_img2img: str = opt("None", "Upscaler for img2img", IMG2IMG)
    latent_upscale_default_mode: str = opt("Latent", "Default latent upscaler for hires fix",
                                           UPSCALING)
    ESRGAN_tile: int = opt(192, "Tile size for ESRGAN upscalers (0 = no tiling)", UPSCALING,
                           minimum=0, maximum=1024)
    ESRGAN_tile_overlap: int = opt(8, "Tile overlap for ESRGAN upscalers (pixels)", UPSCALING,
                                   minimum=0, maximum=128)
    auto_vae_precision: bool = opt(True, "Automatically revert VAE to 32-bit floats (when a "
                                   "half-precision decode produces NaNs)", VAE)
    tiled_vae: bool = opt(False, "Always decode and encode with the tiled VAE", VAE)
    tiled_vae_auto: bool = opt(True, "Use the tiled VAE when memory would not suffice", VAE)
    tiled_vae_decoder_tile: int = opt(64, "Tiled VAE decoder tile size (latent pixels)", VAE,
                                      minimum=16, maximum=512)
    tiled_vae_decoder_overlap: int = opt(16, "Tiled VAE decoder overlap (latent pixels)", VAE,
                                         minimum=0, maximum=64)
    tiled_vae_refine: int = opt(1, "Tiled VAE statistics refinement passes", VAE,
                                minimum=0, maximum=4)
    tiled_vae_encoder_tile: int = opt(512, "Tiled VAE encoder tile size (pixels)", VAE,
                                      minimum=128, maximum=4096)
    tiled_vae_encoder_overlap: int = opt(64, "Tiled VAE encoder overlap (pixels)", VAE,
                                         minimum=0, maximum=256)
    hires_fix_refiner_pass: str = opt("second pass", "Hires fix: which pass to enable refiner for",
                                      SD, infotext="Hires refiner",
                                      choices=("first pass", "second pass", "both passes"))
    refiner_switch_by_sample_steps: bool = opt(False, "Switch to the refiner by sampling steps "
                                               "instead of by sigma", COMPAT,
                                               infotext="Refiner switch by sampling steps")
    sdxl_crop_top: int = opt(0, "crop top coordinate", SDXL, minimum=0, maximum=4096)
    sdxl_crop_left: int = opt(0, "crop left coordinate", SDXL, minimum=0, maximum=4096)
    sdxl_refiner_low_aesthetic_score: float = opt(2.5, "SDXL low aesthetic score", SDXL,
                                                  minimum=0.0, maximum=10.0)
    sdxl_refiner_high_aesthetic_score: float = opt(6.0, "SDXL high aesthetic score", SDXL,
                                                   minimum=0.0, maximum=10.0)
    # Sampler parameters
    eta_ddim: float = opt(0.0, "Eta for DDIM", SAMPLER, infotext="Eta DDIM",
                          minimum=0.0, maximum=1.0)
    eta_ancestral: float = opt(1.0, "Eta for k-diffusion samplers", SAMPLER, infotext="Eta",
                               minimum=0.0, maximum=1.0)
    eta_noise_seed_delta: int = opt(0, "Eta noise seed delta", SAMPLER, infotext="ENSD",
                                    minimum=0)
    s_churn: float = opt(0.0, "sigma churn", SAMPLER, infotext="Sigma churn",
                         minimum=0.0, maximum=100.0)
    s_tmin: float = opt(0.0, "sigma tmin", SAMPLER, infotext="Sigma tmin",
                        minimum=0.0, maximum=10.0)
    s_tmax: float = opt(0.0, "sigma tmax", SAMPLER, infotext="Sigma tmax",
                        minimum=0.0, maximum=999.0)
    s_noise: float = opt(1.0, "sigma noise", SAMPLER, infotext="Sigma noise",
                         minimum=0.0, maximum=1.1)
    sigma_min: float = opt(0.0, "sigma min", SAMPLER, infotext="Schedule min sigma", minimum=0.0)
    sigma_max: float = opt(0.0, "sigma max", SAMPLER, infotext="Schedule max sigma", minimum=0.0)
    rho: float = opt(0.0, "rho", SAMPLER, infotext="Schedule rho", minimum=0.0)
    always_discard_next_to_last_sigma: bool = opt(False, "Always discard next-to-last sigma",
                                                  SAMPLER, infotext="Discard penultimate sigma")
    sgm_noise_multiplier: bool = opt(False, "SGM noise multiplier", SAMPLER,
                                     infotext="SGM noise multiplier")
    uni_pc_order: int = opt(3, "UniPC order", SAMPLER, infotext="UniPC order",
                            minimum=1, maximum=50)
    s_min_uncond: float = opt(0.0, "Negative Guidance minimum sigma", SAMPLER, infotext="NGMS",
                              minimum=0.0, maximum=15.0)
    skip_early_cond: float = opt(0.0, "Ignore negative prompt during early sampling", SAMPLER,
                                 infotext="Skip Early CFG", minimum=0.0, maximum=1.0)
    beta_dist_alpha: float = opt(0.6, "Beta scheduler - alpha", SAMPLER,
                                 infotext="Beta schedule alpha", minimum=0.01, maximum=1.0)
    beta_dist_beta: float = opt(0.6, "Beta scheduler - beta", SAMPLER,
                                infotext="Beta schedule beta", minimum=0.01, maximum=1.0)
    # Optimizations (modules/nn/token_merging.py)
    token_merging_ratio: float = opt(0.0, "Token merging ratio", OPTIMIZATIONS,
                                     infotext="Token merging ratio", minimum=0.0, maximum=0.9)
    token_merging_ratio_img2img: float = opt(0.0, "Token merging ratio for img2img",
                                             OPTIMIZATIONS, minimum=0.0, maximum=0.9)
    token_merging_ratio_hr: float = opt(0.0, "Token merging ratio for high-res pass",
                                        OPTIMIZATIONS, infotext="Token merging ratio hr",
                                        minimum=0.0, maximum=0.9)
    # Compatibility
    use_old_scheduling: bool = opt(False, "Use old prompt editing timelines", COMPAT,
                                   infotext="Old prompt editing timelines")
    # Infotext
    add_model_hash_to_info: bool = opt(True, "Add model hash to infotext", INFOTEXT)
    add_model_name_to_info: bool = opt(True, "Add model name to infotext", INFOTEXT)
    add_version_to_infotext: bool = opt(True, "Add program version to infotext", INFOTEXT)
    # Live previews
    live_previews_enable: bool = opt(True, "Show live previews", PREVIEWS)
    show_progress_every_n_steps: int = opt(5, "Live preview display period (steps)", PREVIEWS,
                                           minimum=-1, maximum=32)
    # API
    api_enable_requests: bool = opt(True, "Allow http:// and https:// URLs for input images", API,
                                    guard=POLICY)
    api_forbid_local_requests: bool = opt(True, "Forbid URLs to local resources", API,
                                          guard=POLICY)
    # Extensions (modules/extensions/registry.py)
    disabled_extensions: str = opt("[]", "Disabled extensions (a JSON list of names)", EXTENSIONS)
    disable_all_extensions: str = opt("none", "Disable all extensions (preserves the list of "
                                      "disabled extensions)", EXTENSIONS, restart=True,
                                      choices=("none", "extra", "all"))
