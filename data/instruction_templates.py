"""The phrasings of the built-in instruction Tasks, Flan style: several per Task.

Each pattern's fields are those the Task's examples provide (see instruction_tasks).
"""

from .templates import Template

STDLIB_SIGNATURE = (
    Template("Write the signature (the def line) of the Python function {module}.{qualname}, "
             "documented as follows.\n\n{docstring}\n\nSignature:\n", "{signature}"),
    Template('Here is the docstring of `{qualname}` from the `{module}` module:\n"""\n'
             '{docstring}\n"""\nWhat is its function header?\n', "{signature}"),
    Template("Docstring:\n{docstring}\n\nGive the def statement of {module}.{qualname} "
             "that this docstring documents.\n", "{signature}"),
    Template("{module}.{qualname}: {docstring}\n\nDeclare this function in Python.\n",
             "{signature}"),
)

STDLIB_SUMMARY = (
    Template("Summarize what this Python function does in one line.\n\n{body}\n\nSummary:\n",
             "{summary}"),
    Template("{body}\n\nWrite a one-line docstring for the function above.\n", "{summary}"),
    Template("Function {qualname} from the {module} module:\n\n{body}\n\n"
             "Describe it in one sentence.\n", "{summary}"),
)

PYDOC_TOPIC = (
    Template("Explain {subject} in Python, in one paragraph.\n", "{paragraph}"),
    Template("What does the Python language reference say about {subject}? "
             "(help topic '{topic}')\n", "{paragraph}"),
    Template("Python documentation, topic '{topic}': {subject}\nOpening paragraph:\n",
             "{paragraph}"),
)

ARITHMETIC_DIRECT = (
    Template("What is {a} {symbol} {b}?\n", "{answer}"),
    Template("{a} {symbol} {b} = ", "{answer}"),
    Template("Calculate {phrase}.\n", "{answer}"),
    Template("Q: What is {phrase}?\nA: ", "{answer}"),
)

ARITHMETIC_STEP_BY_STEP = (
    Template("What is {a} {symbol} {b}? Work it out step by step.\n", "{solution}"),
    Template("Calculate {phrase}. Show your work.\n", "{solution}"),
    Template("Q: What is {phrase}?\nLet's think step by step.\n", "{solution}"),
)

# How each operation reads in words, for the `{phrase}` field.
ARITHMETIC_PHRASES = {
    "add": "the sum of {a} and {b}",
    "subtract": "{a} minus {b}",
    "multiply": "the product of {a} and {b}",
}
