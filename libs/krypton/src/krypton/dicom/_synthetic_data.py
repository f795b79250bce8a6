"""Word lists and examination protocols for `krypton.dicom.synthetic` (data only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "ACCESSION_PREFIX",
    "DEPARTMENTS",
    "FAMILY_NAMES",
    "FEMALE_NAMES",
    "MALE_NAMES",
    "MANUFACTURERS",
    "OTHER_BIRTH_DEPARTMENTS",
    "PROTOCOLS",
    "UNIVERSITY_TOWNS",
    "Protocol",
]

# Nouvelle-Aquitaine: department -> (population in thousands, towns with imaging).
DEPARTMENTS: Final[dict[str, tuple[int, tuple[str, ...]]]] = {
    "16": (350, ("Angoulême", "Cognac")),
    "17": (660, ("La Rochelle", "Saintes", "Rochefort")),
    "19": (240, ("Brive-la-Gaillarde", "Tulle")),
    "23": (115, ("Guéret",)),
    "24": (410, ("Périgueux", "Bergerac", "Sarlat-la-Canéda")),
    "33": (1650, ("Bordeaux", "Mérignac", "Pessac", "Libourne", "Arcachon")),
    "40": (420, ("Mont-de-Marsan", "Dax")),
    "47": (330, ("Agen", "Marmande", "Villeneuve-sur-Lot")),
    "64": (690, ("Pau", "Bayonne", "Oloron-Sainte-Marie")),
    "79": (375, ("Niort", "Bressuire")),
    "86": (440, ("Poitiers", "Châtellerault")),
    "87": (370, ("Limoges", "Saint-Junien")),
}
UNIVERSITY_TOWNS: Final = {"33": "Bordeaux", "86": "Poitiers", "87": "Limoges"}

FAMILY_NAMES: Final = (
    "MARTIN", "BERNARD", "DUBOIS", "THOMAS", "ROBERT", "RICHARD", "PETIT", "DURAND", "LEROY",
    "MOREAU", "SIMON", "LAURENT", "LEFÈVRE", "MICHEL", "GARCIA", "DAVID", "BERTRAND", "ROUX",
    "VINCENT", "FOURNIER", "MOREL", "GIRARD", "ANDRÉ", "MERCIER", "DUPONT", "LAMBERT", "BONNET",
    "FRANÇOIS", "MARTINEZ", "LE GALL", "LE BIHAN", "DE LA FONTAINE", "DE SAINT-AUBIN",
    "LABORDE", "ETCHEVERRY", "ETCHEGARAY", "DARRIGRAND", "LAFARGUE", "DUPUY", "LACOSTE",
    "BORDES", "CASSAGNE", "DELMAS", "FAURE", "CHASTANG", "MAZEAU", "COUDERC", "PÉRIER",
    "HÉBRARD", "LESCURE", "D'ARTIGUES", "SAINT-MARTIN", "GUÉRIN", "BOUCHERON", "CHÂTEAUNEUF",
    "NGUYEN", "DA SILVA", "BENOÎT", "LAFFITTE", "POUGET", "BARRIÈRE", "DESCHAMPS", "JOLY",
    "GAUTHIER", "MÉNARD", "RENAUD", "BRUNET", "BLANCHARD", "LÉGER", "NOËL",
)  # fmt: skip
MALE_NAMES: Final = (
    "Jean", "Pierre", "Michel", "André", "Philippe", "Louis", "Nicolas", "Jérôme", "Stéphane",
    "François", "Hervé", "Benoît", "Jean-Pierre", "Jean-François", "Jean-Noël", "Gaël", "Maël",
    "Noé", "Loïc", "Théo", "Raphaël", "Hugo", "Lucas", "Joël", "Aurélien", "Sébastien",
    "Frédéric", "Cédric", "Rémi", "Jérémy", "Mathéo", "Bastien", "Iñaki", "Xabi", "Pierre-Yves",
)  # fmt: skip
FEMALE_NAMES: Final = (
    "Marie", "Anne", "Sophie", "Isabelle", "Hélène", "Cécile", "Élise", "Émilie", "Chloé", "Léa",
    "Zoé", "Maëlle", "Anaïs", "Inès", "Noémie", "Mélanie", "Séverine", "Françoise",
    "Geneviève", "Thérèse", "Marie-Hélène", "Marie-Thérèse", "Anne-Sophie", "Marie-Noëlle",
    "Béatrice", "Agnès", "Clémence", "Océane", "Josée", "Renée", "Maïté", "Laëtitia",
)  # fmt: skip
# Departments of birth outside the region (including Corsica), for NIRs.
OTHER_BIRTH_DEPARTMENTS: Final = (
    "75", "69", "13", "31", "59", "44", "35", "29", "2A", "2B", "67", "06", "34", "92", "93",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Protocol:
    """How one kind of examination looks: series and instance counts, words."""

    modality: str
    weight: int
    descriptions: tuple[tuple[str, str, tuple[str, ...]], ...]  # study, body part, series
    series_count: tuple[int, int]
    instances_per_series: tuple[int, int]


PROTOCOLS: Final = (
    Protocol(
        "DX",
        22,
        (
            ("RADIOGRAPHIE DU THORAX", "CHEST", ("Thorax face", "Thorax profil")),
            ("RADIOGRAPHIE GENOU", "KNEE", ("Genou F", "Genou P", "Défilé fémoro-patellaire")),
            ("RADIOGRAPHIE RACHIS LOMBAIRE", "LSPINE", ("Rachis lombaire F", "Rachis lombaire P")),
            ("RADIOGRAPHIE BASSIN", "PELVIS", ("Bassin face",)),
        ),
        (1, 3),
        (1, 2),
    ),
    Protocol(
        "CR",
        12,
        (
            ("RADIOGRAPHIE MAIN", "HAND", ("Main F", "Main oblique")),
            ("RADIOGRAPHIE CHEVILLE", "ANKLE", ("Cheville F", "Cheville P")),
            ("RADIOGRAPHIE DU THORAX", "CHEST", ("Thorax face",)),
        ),
        (1, 2),
        (1, 2),
    ),
    Protocol(
        "CT",
        17,
        (
            ("SCANNER THORACO-ABDOMINO-PELVIEN", "CHEST", ("Topogramme", "TAP injecté", "MPR")),
            ("SCANNER CÉRÉBRAL SANS INJECTION", "HEAD", ("Topogramme", "Cérébral", "Os")),
            ("ANGIOSCANNER THORACIQUE", "CHEST", ("Topogramme", "Angio artériel", "MIP")),
            ("SCANNER RACHIS LOMBAIRE", "LSPINE", ("Topogramme", "Parties molles", "Os")),
        ),
        (2, 4),
        (40, 300),
    ),
    Protocol(
        "MR",
        12,
        (
            ("IRM CÉRÉBRALE", "BRAIN", ("Sag T1", "Ax FLAIR", "Ax T2*", "Diffusion", "3D T1 Gado")),
            ("IRM DU GENOU", "KNEE", ("Cor DP FS", "Sag DP FS", "Ax DP FS", "Sag T1")),
            ("IRM RACHIS LOMBAIRE", "LSPINE", ("Sag T1", "Sag T2", "Sag STIR", "Ax T2")),
            ("IRM PELVIENNE", "PELVIS", ("Ax T2", "Sag T2", "Diffusion", "Dynamique")),
        ),
        (3, 7),
        (20, 160),
    ),
    Protocol(
        "US",
        15,
        (
            ("ÉCHOGRAPHIE ABDOMINALE", "ABDOMEN", ("Abdomen",)),
            ("ÉCHOGRAPHIE THYROÏDIENNE", "NECK", ("Thyroïde",)),
            ("ÉCHO-DOPPLER DES MEMBRES INFÉRIEURS", "LEG", ("Doppler veineux",)),
        ),
        (1, 1),
        (4, 30),
    ),
    Protocol(
        "MG",
        9,
        (("MAMMOGRAPHIE BILATÉRALE", "BREAST", ("Mammographie",)),),
        (1, 1),
        (4, 4),
    ),
    Protocol(
        "NM",
        4,
        (
            ("SCINTIGRAPHIE OSSEUSE", "WHOLEBODY", ("Balayage corps entier", "Statiques")),
            ("SCINTIGRAPHIE THYROÏDIENNE", "NECK", ("Thyroïde",)),
        ),
        (1, 2),
        (1, 4),
    ),
    Protocol(
        "PT",
        4,
        (("TEP-TDM AU 18F-FDG", "WHOLEBODY", ("TEP AC", "TEP NAC", "TDM basse dose")),),
        (3, 3),
        (150, 300),
    ),
)
MANUFACTURERS: Final = ("SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "CANON_MEC", "FUJIFILM")
ACCESSION_PREFIX: Final = {"CT": "SC", "MR": "IR", "US": "EC", "MG": "MG", "NM": "MN", "PT": "TE"}
