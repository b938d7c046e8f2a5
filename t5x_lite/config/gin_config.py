"""Gin parsing for the CLI: the installed gin/ folder on the search path,
T5X-style `--gin.KEY=VALUE` flags, errors turned into one clear line, and the
checks and defaults of the macros a command needs."""

import os
import re
import tokenize

import gin
from absl import logging

from t5x_lite import storage
from t5x_lite.errors import ConfigError

REQUIRED_MACROS = ("MODEL_DIR", "TRAIN_STEPS")


def installed_gin_dir() -> str:
    """The gin/ folder: inside the installed package, or beside it in a source checkout."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(package_dir, "gin"),
                      os.path.join(os.path.dirname(package_dir), "gin")):
        if os.path.isfile(os.path.join(candidate, "quickstart.gin")):
            return candidate
    raise ConfigError(f"the gin/ configs are missing beside {package_dir}; reinstall t5x_lite.")


def rewrite_gin_args(argv: list[str]) -> list[str]:
    """`--gin.X=Y` -> `--gin_bindings=X = Y` (T5X's shorthand for one binding)."""
    rewritten = []
    for index, arg in enumerate(argv):
        if arg == "--":  # what follows is another command's (t5x_lite supervise -- ...)
            return rewritten + argv[index:]
        if arg.startswith("--gin.") and "=" in arg:
            key, value = arg[len("--gin."):].split("=", 1)
            rewritten.append(f"--gin_bindings={key} = {value}")
        else:
            rewritten.append(arg)
    return rewritten


def _one_line(error: Exception | str) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _describe(error: Exception) -> str:
    """Gin's message on one line, without its echo of the binding or Python object reprs."""
    if isinstance(error, tokenize.TokenError):
        return "unexpected end of the text: an unclosed bracket or quote?"
    text = str(error).split("\n  In bindings string")[0]
    text = re.sub(r"malformed node or string on line \d+: <ast\.\w+ object at 0x[0-9a-f]+>\s*"
                  r"(?=\S)", "", text)  # ast.literal_eval's part of a parse error
    return _one_line(text)


def _parse_one(parse_fn, source: str, what: str) -> None:
    try:
        parse_fn(source)
    except OSError as error:
        raise ConfigError(f"gin file not found: {_one_line(error)} Check --gin_file; "
                          f"installed configs live in {installed_gin_dir()}.") from None
    except (ValueError, SyntaxError, ImportError, tokenize.TokenError) as error:
        raise ConfigError(f"bad {what}: {_describe(error)}") from None


def _is_remote_file(location: str) -> bool:
    return storage.is_uri(location) and storage.path(location).is_file()


def _read_remote(location: str):
    return storage.path(location).open()


def parse(gin_files: list[str], bindings: list[str], search_paths: list[str] = ()) -> None:
    """Parses files then bindings, one at a time, so that an error names its source;
    a missing file or a bad file or binding raises ConfigError."""
    gin.config.register_file_reader(_read_remote, _is_remote_file)  # gs:// files, includes
    for path in [os.getcwd(), *search_paths, installed_gin_dir()]:
        gin.add_config_file_search_path(path)
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.FATAL)  # gin logs every search-path miss as an error
    try:
        for gin_file in gin_files:
            _parse_one(gin.parse_config_file, gin_file, f"gin file {gin_file}")
        for binding in bindings:
            _parse_one(gin.parse_config, binding, f"gin binding '{binding}'")
    finally:
        logging.set_verbosity(verbosity)


def macro_is_set(macro: str) -> bool:
    """Whether the parsed config binds `macro` to something other than %gin.REQUIRED."""
    try:
        value = gin.query_parameter(f"%{macro}")
    except ValueError:
        value = None
    return value is not None and str(value) != "%gin.REQUIRED"


def check_required_macros(macros=REQUIRED_MACROS) -> None:
    for macro in macros:
        if not macro_is_set(macro):
            raise ConfigError(f"required gin macro {macro} is not set; pass "
                              f"--gin.{macro}=... or bind it in a gin file.")


def bind_unset_macros(values: dict) -> None:
    """Binds each macro of `values` (name -> value) that the parsed config leaves unset."""
    for macro, value in values.items():
        if not macro_is_set(macro):
            gin.bind_parameter(f"{macro}/gin.macro.value", value)
