"""Opening paragraphs of the pydoc topics (the Python language reference shipped with Python).

A topic text starts with a title underlined by '*' and may have sections underlined
by '=' or '-'. Each title and section gives one record: the first prose paragraph
under it (not indented, not a version note), joined into one line. Records keep
the embedded corpus split: a topic is in the validation split when its document is.
"""

import dataclasses
import functools
import re

from .embedded_corpus import documents

MIN_PARAGRAPH_CHARS = 40
_HEADING_UNDERLINE = re.compile(r"^([*=-])\1+$")
_VERSION_NOTES = ("New in version", "Changed in version", "Deprecated since version")


@dataclasses.dataclass(frozen=True)
class TopicParagraph:
    topic: str       # the pydoc topic name, as in help('topic')
    title: str       # the topic's title
    section: str     # the section heading; '' for the topic's own opening paragraph
    paragraph: str   # one line

    @property
    def subject(self) -> str:
        return f"{self.section} ({self.title})" if self.section else self.title


@functools.cache
def topic_paragraphs(split: str) -> tuple[TopicParagraph, ...]:
    """Opening paragraphs of the topics and their sections in `split`."""
    found = []
    for doc in documents.split_documents("prose")[split]:
        found.extend(paragraphs_of_topic(doc.name, doc.text))
    return tuple(found)


def paragraphs_of_topic(topic: str, text: str) -> list[TopicParagraph]:
    title, found = "", []
    for heading, paragraphs in _sections(text):
        opening = next((p for p in paragraphs if _is_prose(p)), None)
        if not title:
            title = heading
        if opening is not None:
            section = "" if heading == title else heading
            found.append(TopicParagraph(topic, title, section, " ".join(opening.split())))
    return found


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, paragraphs under it) in text order."""
    sections = []
    for paragraph in re.split(r"\n\s*\n", text.strip("\n")):
        lines = paragraph.split("\n")
        if len(lines) == 2 and _HEADING_UNDERLINE.match(lines[1]):
            sections.append((lines[0].strip(), []))
        elif sections:
            sections[-1][1].append(paragraph)
    return sections


def _is_prose(paragraph: str) -> bool:
    return (len(paragraph) >= MIN_PARAGRAPH_CHARS and not paragraph[0].isspace()
            and not paragraph.startswith(_VERSION_NOTES))
